"""``edgefleet gateway run|devices|status|dead-letters|import-release|install-service``: the site
daemon, what the operator asks it, and its systemd service."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefleet import service_commands


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gateway", help="the site gateway daemon")
    commands = parser.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)

    run_parser = commands.add_parser(
        "run", help="run the gateway: MQTT ingest, spool, uplink, inventory, metrics, admin API"
    )
    run_parser.add_argument("--config", type=Path, required=True, help="gateway TOML file")
    run_parser.set_defaults(handler=run)

    devices_parser = commands.add_parser("devices", help="list the devices the gateway knows")
    devices_parser.add_argument("--config", type=Path, required=True, help="gateway TOML file")
    devices_parser.add_argument("--json", action="store_true", help="JSON for scripts")
    devices_parser.set_defaults(handler=devices)

    status_parser = commands.add_parser("status", help="spool depth, drops and devices online")
    status_parser.add_argument("--config", type=Path, required=True, help="gateway TOML file")
    status_parser.set_defaults(handler=status)

    dead_parser = commands.add_parser(
        "dead-letters",
        help="what the gateway set aside: malformed device messages, records the cloud refused",
    )
    dead_parser.add_argument("--config", type=Path, help="gateway TOML file")
    dead_parser.add_argument("--json", action="store_true", help="JSON for scripts")
    dead_parser.set_defaults(handler=dead_letters)
    dead_commands = dead_parser.add_subparsers(dest="dead_letters_command", metavar="COMMAND")
    resend_parser = dead_commands.add_parser(
        "resend", help="put records the cloud refused back into the uplink (all without IDs)"
    )
    resend_parser.add_argument("ids", type=int, nargs="*", metavar="ID", help="dead letter ids")
    resend_parser.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="gateway TOML file"
    )
    resend_parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON for scripts"
    )

    import_parser = commands.add_parser(
        "import-release",
        help="have the running gateway take in a release signed offline (a repository folder)",
    )
    import_parser.add_argument("--config", type=Path, required=True, help="gateway TOML file")
    import_parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        help="the operator's repository folder (readable by the gateway's user)",
    )
    import_parser.add_argument("--json", action="store_true", help="JSON for scripts")
    import_parser.set_defaults(handler=import_release)

    service_commands.register(commands, "gateway")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway import config, daemon

    return asyncio.run(daemon.run(config.load(args.config)))


def devices(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import sys

    from gateway import admin_client, config
    from gateway.devices import table as device_table

    answer = asyncio.run(admin_client.get(config.load(args.config).admin, "/v1/devices"))
    if args.json:
        json.dump(answer["devices"], sys.stdout, indent=2)
        print()
    else:
        device_table.print_table(answer["devices"])
    return 0


def status(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from gateway import admin_client, config

    answer = asyncio.run(admin_client.get(config.load(args.config).admin, "/v1/status"))
    print(json.dumps(answer, indent=2))
    return 0


def dead_letters(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from edgefleet.errors import UserError
    from gateway import admin_client, config

    if args.config is None:
        raise UserError("the following argument is required: --config")
    admin = config.load(args.config).admin
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
    print_dead_letters(answer["dead_letters"], answer["stats"])
    return 0


def print_dead_letters(entries: list[dict], stats: dict) -> None:
    import datetime

    head = ("ID", "TIME (UTC)", "SOURCE", "KIND", "REASON", "SIZE")
    print("{:>6}  {:19}  {:6}  {:9}  {:15}  {:>8}  DETAIL".format(*head))
    for entry in entries:
        at = datetime.datetime.fromtimestamp(entry["at"], datetime.UTC)
        detail = " ".join(entry["detail"].split())[:70]
        print(
            f"{entry['id']:>6}  {at:%Y-%m-%d %H:%M:%S}  {entry['source']:6}  {entry['kind']:9}  "
            f"{entry['reason']:15}  {entry['size']:>8}  {detail}"
        )
    print(
        f"{stats['entries']} dead letters ({stats['records']} records), "
        f"{stats['dropped']} dropped by the cap ({stats['dropped_records']} records)"
    )


IMPORT_TIMEOUT_S = 300.0


def import_release(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from edgefleet.errors import UserError
    from gateway import admin_client, config

    source = args.source.resolve()
    if not (source / "metadata").is_dir():
        raise UserError(f"{source}: not a repository (no metadata/ folder)")
    answer = asyncio.run(
        admin_client.post(
            config.load(args.config).admin,
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
