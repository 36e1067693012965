"""The ``edgefleet`` command.

Each part of the system contributes its subcommands through a ``register(subparsers)`` function
in a small ``commands`` module that imports nothing heavy; a subcommand's handler imports what it
needs when it runs, so ``edgefleet agent run`` never pays for the signing code and the reverse.
What every command shares (``--json``, tables, defaults in ``--help``, global options anywhere,
configuration lookup) is in :mod:`edgefleet.commandline` and :mod:`edgefleet.tables`; the rules
are in docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgefleet import __version__, logs
from edgefleet.commandline import Parser, add_global_options, every_parser
from edgefleet.errors import UserError

COMMAND_MODULES = (
    "gateway.releases.commands",
    "gateway.daemon_commands",
    "gateway.rollouts.commands",
    "gateway.campaigns.commands",
    "gateway.devices.commands",
    "agent.commands",
    "agent.trust_commands",
    "agent.updater.commands",
    "agent.mcu.commands",
    "firmware_sim.commands",
    "firmware_sim.fleet.commands",
    "cloud.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="edgefleet",
        description="Keep ML models alive on fleets of embedded devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    add_global_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for _, sub in list(every_parser(parser))[1:]:
        add_global_options(sub, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, lean=getattr(args, "lean", False), fmt=args.log_format)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
