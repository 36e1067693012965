"""The update worker: ``python -m agent.updater.worker --state-dir DIR --root ROOT CMD``.

The daemon starts it as a child process for the update work, so python-tuf and a candidate model
that might crash the runtime never live in the daemon. Every saved state is printed on stdout
as one JSON line (the daemon turns them into events); the last line is the final state.

Commands: ``run`` (take or resume an offer, up to TRIAL), ``boot`` (recovery at start-up),
``finish`` (commit or roll back a trial), ``abort`` (give up before the switch), ``status``.
Exit status: 0 done, 3 busy with another update, 4 not allowed in this state, 75 repository
unreachable (the saved state stays, to resume).

``main`` takes where its lines and complaints go, so the same work can also run in a thread of
a process that hosts many devices (``agent.updater.runners``), with the same line contract.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agent.updater.device import UpdaterDevice
from agent.updater.download import DEFAULT_MAX_MODEL_BYTES
from agent.updater.errors import Busy, Transient
from agent.updater.states import InvalidTransition, Step
from agent.updater.store import Offer, Saved, UnknownState

EXIT_BUSY = 3
EXIT_NOT_ALLOWED = 4
EXIT_TEMPFAIL = 75
DEFAULT_MAX_TRIAL_BOOTS = 3


def transition_line(saved: Saved, event: Step | None) -> dict[str, Any]:
    return {
        "state": saved.state.value,
        "event": event.value if event else None,
        "target": saved.offer.target if saved.offer else None,
        "reason": saved.reason,
        "boots": saved.boots,
    }


def _print_line(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.updater.worker")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument(
        "--root", type=Path, help="trusted root.json the device was provisioned with"
    )
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--max-trial-boots", type=int, default=DEFAULT_MAX_TRIAL_BOOTS)
    parser.add_argument("--max-model-bytes", type=int, default=DEFAULT_MAX_MODEL_BYTES)
    parser.add_argument(
        "--allow-model",
        action="append",
        metavar="NAME",
        help="a model name this device may run (repeat; none: the name of the running model)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="take an offer (or resume the saved update)")
    run.add_argument("--repository")
    run.add_argument("--target")
    run.add_argument("--rollout", default="")
    commands.add_parser("boot", help="recover after a start: settle, count trial restarts")
    finish = commands.add_parser("finish", help="end the trial")
    verdict = finish.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--commit", action="store_true")
    verdict.add_argument("--rollback", metavar="REASON")
    abort = commands.add_parser("abort", help="give up an update before the switch")
    abort.add_argument("reason")
    commands.add_parser("status")
    return parser


def execute(args: argparse.Namespace, device: UpdaterDevice) -> Saved:
    if args.command == "boot":
        return device.boot(args.max_trial_boots)
    if args.command == "status":
        return device.store.load()
    if args.command == "finish":
        return device.finish(device.store.load(), bool(args.commit), args.rollback or "")
    if args.command == "abort":
        return device.abort(device.store.load(), args.reason)
    from agent.updater.cycle import Cycle, CycleConfig  # python-tuf: only for update work

    offer = Offer(args.repository, args.target, args.rollout) if args.target else None
    allowed = frozenset(args.allow_model) if args.allow_model else None
    config = CycleConfig(args.root, args.engine, args.max_model_bytes, allowed)
    return Cycle(device, config).start(offer)


def main(
    argv: list[str] | None = None,
    emit: Callable[[dict[str, Any]], None] = _print_line,
    errors: TextIO | None = None,
) -> int:
    """Run one command; every line of the contract goes to ``emit``, complaints to ``errors``
    (default: stdout as JSON lines, and stderr)."""
    errors = errors or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and bool(args.target) != bool(args.repository):
        parser.error("run: --target and --repository go together")
    device = UpdaterDevice(args.state_dir, lambda saved, event: emit(transition_line(saved, event)))
    try:
        saved = execute(args, device)
    except Busy as exc:
        print(f"busy: {exc}", file=errors)
        return EXIT_BUSY
    except InvalidTransition as exc:
        print(f"not allowed: {exc}", file=errors)
        return EXIT_NOT_ALLOWED
    except UnknownState as exc:
        print(f"unreadable saved state ({exc}); run boot first", file=errors)
        return EXIT_NOT_ALLOWED
    except Transient as exc:
        # The agent reports the device blocked, with why, and tries again later.
        emit(transition_line(device.store.load(), None) | {"blocked": str(exc)[:512]})
        return EXIT_TEMPFAIL
    emit({"final": saved.to_json()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
