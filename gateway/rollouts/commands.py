"""``edgefleet rollout start|status|pause|resume|abort``: staged model updates, through the running
gateway's admin API (the gateway owns the rollouts; the CLI only asks)."""

from __future__ import annotations

import argparse
import re

from edgefleet.commandline import add_config, add_json, add_table_options, config_path
from edgefleet.errors import UserError
from edgefleet.tables import Column, print_table

START_TIMEOUT_S = 300.0  # the gateway signs the deltas the devices need before it answers
WAIT_POLL_S = 1.0
ENDED = ("completed", "paused", "aborted")


def parse_stages(text: str) -> list[int]:
    """``"1,10,50,100"`` -> [1, 10, 50, 100]; the gateway checks the order and the end at 100."""
    try:
        stages = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--stages {text!r}: give percentages like 1,10,50,100") from None
    if not stages or stages != sorted(set(stages)) or stages[-1] != 100 or stages[0] < 1:
        raise UserError(f"--stages {text!r}: increasing percentages in 1..100, ending at 100")
    return stages


def parse_duration(text: str, option: str = "--soak") -> float:
    """``"10m"``, ``"30s"``, ``"1h"``, ``"0"`` -> seconds."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smh]?)", text.strip())
    if not match:
        raise UserError(f"{option} {text!r}: give a duration like 30s, 10m or 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1:
        raise UserError(f"--max-failure-rate {text!r}: give a fraction in 0..1, like 0.05")
    return rate


def parse_version(text: str) -> int:
    from protocol.model_meta import MAX_VERSION

    if not text.isdigit() or not 1 <= int(text) <= MAX_VERSION:
        raise UserError(f"--version {text!r}: give a version number from 1 to {MAX_VERSION}")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rollout", help="staged model updates through the gateway")
    commands = parser.add_subparsers(dest="rollout_command", metavar="COMMAND", required=True)

    start = commands.add_parser("start", help="offer a model version to the fleet in stages")
    add_config(start, "gateway")
    start.add_argument("--model", required=True, help="model or MCU image name, as signed")
    start.add_argument("--version", required=True, help="model version to roll out")
    start.add_argument("--stages", default="1,10,50,100", help="cumulative percentages")
    start.add_argument("--soak", default="10m", help="time a stage runs committed (30s, 10m, 1h)")
    start.add_argument("--max-failure-rate", default="0.05", help="a stage above it pauses")
    start.add_argument(
        "--auto-rollback", action="store_true", help="command a failed stage's devices back"
    )
    start.add_argument(
        "--blocked-deadline",
        default="1h",
        help="how long a device may stay blocked (unable to fetch or verify the update) before "
        "it counts as failed",
    )
    start.add_argument(
        "--wait", action="store_true", help="show progress until it ends; exit 0 only if completed"
    )
    add_json(start, "the new rollout (with --wait: how it ended)")
    start.set_defaults(handler=start_rollout)

    status = commands.add_parser("status", help="every rollout, or one in detail")
    status.add_argument("id", nargs="?", help="a rollout id")
    add_config(status, "gateway")
    add_table_options(status, "the rollouts, or the one rollout")
    status.set_defaults(handler=show_status)

    for action, text in (
        ("pause", "stop offering; devices keep what they run"),
        ("resume", "carry on a paused rollout"),
        ("abort", "end a rollout for good"),
    ):
        sub = commands.add_parser(action, help=text)
        sub.add_argument("id", help="a rollout id")
        add_config(sub, "gateway")
        add_json(sub, "the rollout's new state")
        sub.set_defaults(handler=operate, action=action)


def _admin(args: argparse.Namespace):
    from gateway import config

    return config.load(config_path(args.config, "gateway")).admin


def _print_json(data) -> None:
    import json

    print(json.dumps(data, indent=2))


def start_rollout(args: argparse.Namespace) -> int:
    import asyncio

    from gateway import admin_client

    body = {
        "model": args.model,
        "version": parse_version(args.version),
        "stages": parse_stages(args.stages),
        "soak_s": parse_duration(args.soak),
        "blocked_deadline_s": parse_duration(args.blocked_deadline, "--blocked-deadline"),
        "max_failure_rate": parse_rate(args.max_failure_rate),
        "auto_rollback": args.auto_rollback,
    }
    admin = _admin(args)
    answer = asyncio.run(admin_client.post(admin, "/v1/rollouts", body, START_TIMEOUT_S))
    if not args.wait:
        if args.json:
            _print_json(answer)
        else:
            print(f"rollout {answer['id']} started: {answer['devices']} devices")
            if answer["skipped"]:
                print(f"skipped {len(answer['skipped'])}: see 'rollout status {answer['id']}'")
        return 0
    final = asyncio.run(wait(admin, answer["id"]))
    if args.json:
        _print_json(final)
    else:
        print(f"rollout {final['id']} {final['state']}: {final['reason']}")
    return 0 if final["state"] == "completed" else 1


async def wait(admin, rollout_id: str) -> dict:
    """Poll until the rollout is completed, paused or aborted, with a progress bar on stderr
    (stdout stays for the result); a gateway that is restarting is waited for."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gateway import admin_client

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(rollout_id, total=None)
        while True:
            try:
                view = await admin_client.get(admin, f"/v1/rollouts/{rollout_id}")
            except admin_client.Unreachable:
                bar.update(task, description=f"{rollout_id}: waiting for the gateway")
                await asyncio.sleep(WAIT_POLL_S)
                continue
            stage = view["stage"]
            description = (
                f"{rollout_id} {view['state']} stage {stage + 1}/{len(view['plan']['stages'])}"
                f" ({view['plan']['stages'][stage]}%), failed {view['failed']}"
            )
            bar.update(
                task, description=description, total=view["devices"], completed=view["committed"]
            )
            if view["state"] in ENDED:
                return view
            await asyncio.sleep(WAIT_POLL_S)


def show_status(args: argparse.Namespace) -> int:
    import asyncio

    from gateway import admin_client

    admin = _admin(args)
    path = f"/v1/rollouts/{args.id}" if args.id else "/v1/rollouts"
    answer = asyncio.run(admin_client.get(admin, path))
    if args.json:
        _print_json(answer)
    elif args.id:
        print_detail(answer, args.wide)
    else:
        print_list(answer["rollouts"], args.wide)
    return 0


def print_list(rollouts: list[dict], wide: bool = False) -> None:
    columns = ("devices", "committed", "failed", "blocked")
    print_table(
        (
            Column("id"),
            Column("model"),
            Column("version", right=True),
            Column("state"),
            Column("stage", right=True),
            *(Column(c, right=True, narrow=c in ("committed", "failed")) for c in columns),
        ),
        [
            (r["id"], r["model"], r["version"], r["state"], r["stage"], *(r[c] for c in columns))
            for r in rollouts
        ],
        title="rollouts",
        wide=wide,
    )


def print_detail(view: dict, wide: bool = False) -> None:
    plan = view["plan"]
    print(
        f"rollout {view['id']}: {view['model']} v{view['version']} {view['state']}, "
        f"stage {view['stage'] + 1}/{len(plan['stages'])}"
        + (f" — {view['reason']}" if view["reason"] else "")
    )
    print(
        f"soak {plan['soak_s']:g}s, max failure rate {plan['max_failure_rate']:g}, "
        f"auto-rollback {'on' if plan['auto_rollback'] else 'off'}, "
        f"blocked deadline {plan['blocked_deadline_s']:g}s"
    )
    columns = ("devices", "pending", "offered", "blocked", "committed", "failed")
    print_table(
        (
            Column("stage", right=True),
            Column("percent", right=True),
            *(Column(c, right=True) for c in columns),
        ),
        [
            (row["stage"] + 1, f"{row['percent']}%", *(row[c] for c in columns))
            for row in view["stages"]
        ],
        wide=wide,
    )
    held = [p for p in view["progress"] if p["state"] in ("blocked", "failed")]
    if held:
        print()
        print_table(
            (Column("device"), Column("state"), Column("reason")),
            [(p["device"], p["state"], p["detail"]) for p in held],
            wide=wide,
        )
    if view["skipped"]:
        print()
        print_table(
            (Column("skipped device"), Column("reason")),
            [(row["device"], row["reason"]) for row in view["skipped"]],
            wide=wide,
        )


def operate(args: argparse.Namespace) -> int:
    import asyncio

    from gateway import admin_client

    answer = asyncio.run(
        admin_client.post(_admin(args), f"/v1/rollouts/{args.id}/{args.action}", {})
    )
    if args.json:
        _print_json(answer)
    else:
        print(f"rollout {answer['id']} {answer['state']}")
    return 0
