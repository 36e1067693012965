"""``edgefleet update``: drive a device's updater by hand (operators on a device, and tests).

Runs exactly what the agent runs: the recovery at start-up, then the update work in a child
process. Probation needs live traffic, so by hand a trial ends with ``--commit`` or
``--rollback``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from edgefleet.errors import UserError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    update = subparsers.add_parser(
        "update",
        help="offer a model update to this device's updater, or end its trial",
        description="Recover the updater's saved state, then: with --target, take (or resume) "
        "an offer up to the trial; with --commit or --rollback, end the trial; otherwise print "
        "the state. Every transition is printed as it happens.",
    )
    update.add_argument("--state-dir", type=Path, required=True, help="the updater's folder")
    update.add_argument("--root", type=Path, required=True, help="trusted root.json")
    update.add_argument("--repo", help="repository http(s) URL or folder (with --target)")
    action = update.add_mutually_exclusive_group()
    action.add_argument("--target", help="model target to install, e.g. kws/2.tflite")
    action.add_argument("--resume", action="store_true", help="continue an interrupted update")
    action.add_argument("--commit", action="store_true", help="keep the model on trial")
    action.add_argument("--rollback", metavar="REASON", help="return to the previous model")
    update.add_argument("--json", action="store_true", help="print JSON lines for scripts")
    update.set_defaults(handler=_update)


def _update(args: argparse.Namespace) -> int:
    from agent.updater.manager import Transition, UpdateConfig, UpdateManager
    from agent.updater.states import State

    if args.target and not args.repo:
        raise UserError("--target needs --repo")

    def show(item: Transition) -> None:
        if args.json:
            print(json.dumps(item.detail, sort_keys=True), flush=True)
        else:
            reason = f" ({item.detail['reason']})" if item.detail.get("reason") else ""
            print(f"{item.state.value}{reason}", flush=True)

    async def run() -> dict[str, str | int | None]:
        config = UpdateConfig(args.state_dir, args.root)
        async with UpdateManager(config, show) as manager:
            if args.target:
                await manager.offer(args.repo, args.target)
            elif args.resume:
                await manager.resume()
            elif args.commit or args.rollback:
                if manager.state != State.TRIAL:
                    raise UserError(f"no model on trial (state {manager.state})")
                if args.commit:
                    await manager.commit()
                else:
                    await manager.rollback(args.rollback)
            return manager.status()

    status = asyncio.run(run())
    print(json.dumps(status, sort_keys=True) if args.json else _line(status))
    return 1 if status["update_state"] == "REFUSED" and args.target else 0


def _line(status: dict[str, str | int | None]) -> str:
    version = status["active_version"]
    active = f"slot {status['active_slot']} (v{version})" if version else "no model"
    return f"state {status['update_state']}, active {active}"
