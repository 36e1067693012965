"""The ``edgefleet`` command.

Each part of the system contributes its subcommands through a ``register(subparsers)`` function
in a small ``commands`` module that imports nothing heavy; a subcommand's handler imports what it
needs when it runs, so ``edgefleet agent run`` never pays for the signing code and the reverse.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgefleet import __version__, logs
from edgefleet.errors import UserError

COMMAND_MODULES = (
    "gateway.releases.commands",
    "gateway.daemon_commands",
    "gateway.rollouts.commands",
    "gateway.devices.commands",
    "agent.commands",
    "agent.trust_commands",
    "agent.updater.commands",
    "agent.mcu.commands",
    "firmware_sim.commands",
    "firmware_sim.fleet.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Keep ML models alive on fleets of embedded devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (logs go to stderr; JSON when stderr is not a terminal)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, lean=getattr(args, "lean", False))
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
