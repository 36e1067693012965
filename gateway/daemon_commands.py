"""``edgefleet gateway run|devices|status|dead-letters|import-release|install-service``: the site
daemon, what the operator asks it, and its systemd service."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefleet import service_commands
from edgefleet.commandline import add_config, add_json, add_table_options, config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gateway", help="the site gateway daemon")
    commands = parser.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)

    run_parser = commands.add_parser(
        "run", help="run the gateway: MQTT ingest, spool, uplink, inventory, metrics, admin API"
    )
    add_config(run_parser, "gateway")
    run_parser.set_defaults(handler=run)

    devices_parser = commands.add_parser("devices", help="list the devices the gateway knows")
    add_config(devices_parser, "gateway")
    add_table_options(devices_parser, "the devices")
    devices_parser.set_defaults(handler=devices)

    status_parser = commands.add_parser(
        "status",
        help="spool, devices online, bytes from devices against bytes to the cloud",
    )
    add_config(status_parser, "gateway")
    add_json(status_parser, "the whole status")
    status_parser.set_defaults(handler=status)

    dead_parser = commands.add_parser(
        "dead-letters",
        help="what the gateway set aside: malformed device messages, records the cloud refused",
    )
    add_config(dead_parser, "gateway")
    add_table_options(dead_parser, "the dead letters and their counts")
    dead_parser.set_defaults(handler=dead_letters)
    dead_commands = dead_parser.add_subparsers(dest="dead_letters_command", metavar="COMMAND")
    resend_parser = dead_commands.add_parser(
        "resend", help="put records the cloud refused back into the uplink (all without IDs)"
    )
    resend_parser.add_argument("ids", type=int, nargs="*", metavar="ID", help="dead letter ids")
    # Also after ``resend``; SUPPRESS keeps what was given before it.
    resend_parser.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="as before the command"
    )
    resend_parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="as before the command"
    )

    import_parser = commands.add_parser(
        "import-release",
        help="have the running gateway take in a release signed offline (a repository folder)",
    )
    add_config(import_parser, "gateway")
    import_parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        help="the operator's repository folder (readable by the gateway's user)",
    )
    add_json(import_parser)
    import_parser.set_defaults(handler=import_release)

    service_commands.register(commands, "gateway")


def _config(args: argparse.Namespace):
    from gateway import config

    return config.load(config_path(args.config, "gateway"))


def run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway import daemon

    return asyncio.run(daemon.run(_config(args)))


def devices(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import sys

    from gateway import admin_client
    from gateway.devices import table as device_table

    answer = asyncio.run(admin_client.get(_config(args).admin, "/v1/devices"))
    if args.json:
        json.dump(answer["devices"], sys.stdout, indent=2)
        print()
    else:
        device_table.print_table(answer["devices"], wide=args.wide)
    return 0


def status(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from gateway import admin_client

    answer = asyncio.run(admin_client.get(_config(args).admin, "/v1/status"))
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print_status(answer)
    return 0


def print_status(answer: dict) -> None:
    """The figures an operator looks at first, one per line; ``--json`` has every one."""
    spool = answer["spool"]
    print(f"site: {answer['site']} (edgefleet {answer['version']})")
    print(f"devices: {answer['devices']} ({answer['devices_online']} online)")
    print(f"spool: {spool['records']} records, {spool['bytes']} bytes, {spool['dropped']} dropped")
    traffic = answer.get("traffic") or {}
    if traffic.get("device_bytes"):
        print(
            f"records in from devices: {traffic['device_bytes']} bytes; out to the cloud: "
            f"{traffic['cloud_bytes']} bytes ({traffic['ratio']:.1%})"
        )
    for role, entry in ((answer.get("metadata") or {}).get("roles") or {}).items():
        print(f"metadata {role}: expires {entry['expires']}")
    for line in (answer.get("metadata") or {}).get("warnings") or ():
        print(f"warning: {line}")


def dead_letters(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from gateway import admin_client

    admin = _config(args).admin
    if args.dead_letters_command == "resend":
        answer = asyncio.run(admin_client.post(admin, "/v1/dead-letters/resend", {"ids": args.ids}))
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            print(
                f"{answer['resent']} dead letters ({answer['records']} records) back in the uplink"
            )
        return 0
    answer = asyncio.run(admin_client.get(admin, "/v1/dead-letters"))
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print_dead_letters(answer["dead_letters"], answer["stats"], wide=args.wide)
    return 0


def print_dead_letters(entries: list[dict], stats: dict, wide: bool = False) -> None:
    import datetime

    from edgefleet.tables import Column, print_table

    columns = (
        Column("id", right=True),
        Column("time (UTC)"),
        Column("source"),
        Column("kind", narrow=False),
        Column("reason"),
        Column("size", right=True, narrow=False),
        Column("detail"),
    )
    rows = [
        (
            entry["id"],
            f"{datetime.datetime.fromtimestamp(entry['at'], datetime.UTC):%Y-%m-%d %H:%M:%S}",
            entry["source"],
            entry["kind"],
            entry["reason"],
            entry["size"],
            " ".join(entry["detail"].split()),
        )
        for entry in entries
    ]
    print_table(columns, rows, title="dead letters", wide=wide)
    print(
        f"{stats['entries']} dead letters ({stats['records']} records), "
        f"{stats['dropped']} dropped by the cap ({stats['dropped_records']} records)"
    )


IMPORT_TIMEOUT_S = 300.0


def import_release(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from edgefleet.errors import UserError
    from gateway import admin_client

    source = args.source.resolve()
    if not (source / "metadata").is_dir():
        raise UserError(f"{source}: not a repository (no metadata/ folder)")
    answer = asyncio.run(
        admin_client.post(
            _config(args).admin,
            "/v1/repository/import",
            {"source": str(source)},
            IMPORT_TIMEOUT_S,
        )
    )
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["created"]:
        print(f"imported {answer['new_targets']} targets; serving at {answer['url']}")
    else:
        print(
            f"imported {answer['new_targets']} new targets (targets v{answer['targets_version']})"
        )
    return 0
