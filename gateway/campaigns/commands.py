"""``edgefleet campaign start|list|status|stop``: capture campaigns, through the running gateway's
admin API (the gateway owns the campaigns; the CLI only asks)."""

from __future__ import annotations

import argparse
import json
import re

from edgefleet.commandline import add_config, add_json, add_table_options, config_path
from edgefleet.errors import UserError
from edgefleet.tables import Column, print_table

DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")


def parse_until(text: str, now_s: float) -> int:
    """``--until``: a duration from now (``90m``, ``2h``, ``3d``) or an ISO 8601 time with a
    zone (``2026-12-01T08:00:00Z``) -> Unix milliseconds."""
    from datetime import datetime

    if match := DURATION.fullmatch(text.strip()):
        seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return int((now_s + seconds) * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise UserError(
            f"--until {text!r}: give a duration (90m, 2h, 3d) or a time with its zone "
            "(2026-12-01T08:00:00Z)"
        )
    if when.timestamp() <= now_s:
        raise UserError(f"--until {text!r} is in the past")
    return int(when.timestamp() * 1000)


def positive(option: str):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{option} {text!r}: give a whole number >= 1")
        return int(text)

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "campaign",
        help="capture campaigns: devices keep the inputs a trigger selects",
        description="Ask the devices running a model to capture the inputs a trigger selects "
        "(low margin, a class, drift, disagreement in probation, a random share), up to a "
        "number per device and in all. Devices capture only if their owner enabled [capture] "
        "in agent.toml, within its disk budget and hourly limit.",
    )
    commands = parser.add_subparsers(dest="campaign_command", metavar="COMMAND", required=True)

    start = commands.add_parser("start", help="start a campaign on the devices running a model")
    start.add_argument("name", help="campaign name (letters, digits, '.', '_', '-')")
    add_config(start, "gateway")
    start.add_argument("--model", required=True, help="model name the devices run")
    start.add_argument(
        "--trigger",
        required=True,
        help="which inputs to keep, e.g. 'margin < 0.2 or class in [2, 3]'; fields: margin, "
        "confidence, class, latency_ms, random, drift, disagree; and, or, not, parentheses",
    )
    start.add_argument(
        "--per-device", type=positive("--per-device"), default=50, help="samples per device"
    )
    start.add_argument(
        "--total", type=positive("--total"), default=2000, help="the campaign ends at this many"
    )
    start.add_argument("--until", help="end time: a duration (90m, 2h, 3d) or an ISO 8601 time")
    add_json(start, "the new campaign")
    start.set_defaults(handler=start_campaign)

    listing = commands.add_parser("list", help="every campaign, running and ended")
    add_config(listing, "gateway")
    add_table_options(listing, "the campaigns")
    listing.set_defaults(handler=list_campaigns)

    status = commands.add_parser("status", help="one campaign, device by device")
    status.add_argument("name", help="campaign name")
    add_config(status, "gateway")
    add_table_options(status, "the campaign")
    status.set_defaults(handler=show_status)

    stop = commands.add_parser("stop", help="end a campaign; its devices are told to stop")
    stop.add_argument("name", help="campaign name")
    add_config(stop, "gateway")
    add_json(stop, "the ended campaign")
    stop.set_defaults(handler=stop_campaign)


def _ask(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> dict:
    import asyncio

    from gateway import admin_client, config

    admin = config.load(config_path(args.config, "gateway")).admin
    return asyncio.run(admin_client.request(admin, method, path, body))


def _one_line(view: dict) -> str:
    until = f", until {view['until_ms']}" if view.get("until_ms") else ""
    return (
        f"campaign {view['name']} {view['state']}"
        + (f" ({view['reason']})" if view["reason"] else "")
        + f": {view['received']}/{view['total']} samples from {view['devices']} devices; "
        f"model {view['model']}, trigger {view['trigger']!r}, {view['per_device']} per device"
        + until
    )


def start_campaign(args: argparse.Namespace) -> int:
    import time

    from protocol.capture import parse_trigger
    from protocol.topics import ProtocolError

    try:
        parse_trigger(args.trigger)
    except ProtocolError as exc:
        raise UserError(f"--trigger: {exc}") from None
    body = {
        "name": args.name,
        "model": args.model,
        "trigger": args.trigger,
        "per_device": args.per_device,
        "total": args.total,
        "until_ms": parse_until(args.until, time.time()) if args.until else None,
    }
    view = _ask(args, "POST", "/v1/campaigns", body)
    print(json.dumps(view, indent=2) if args.json else _one_line(view))
    return 0


def list_campaigns(args: argparse.Namespace) -> int:
    campaigns = _ask(args, "GET", "/v1/campaigns")["campaigns"]
    if args.json:
        print(json.dumps(campaigns, indent=2))
        return 0
    print_table(
        (
            Column("name"),
            Column("model"),
            Column("state"),
            Column("received", right=True),
            Column("total", right=True),
            Column("devices", right=True),
            Column("trigger", narrow=False),
        ),
        [
            (c["name"], c["model"], c["state"], c["received"], c["total"], c["devices"],
             c["trigger"])
            for c in campaigns
        ],
        title="campaigns",
        wide=args.wide,
    )  # fmt: skip
    return 0


def show_status(args: argparse.Namespace) -> int:
    view = _ask(args, "GET", f"/v1/campaigns/{args.name}")
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(_one_line(view))
    print_table(
        (Column("device"), Column("state"), Column("received", right=True)),
        [(d, row["state"], row["received"]) for d, row in view["per_device"].items()],
        wide=args.wide,
    )
    return 0


def stop_campaign(args: argparse.Namespace) -> int:
    view = _ask(args, "POST", f"/v1/campaigns/{args.name}/stop", {})
    print(json.dumps(view, indent=2) if args.json else _one_line(view))
    return 0
