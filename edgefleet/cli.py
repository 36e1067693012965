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

# Each top-level command word and the module that registers it. A command builds a parser with
# its own module only, so ``agent run`` on a device never imports the gateway's, the cloud's or
# the simulator's code (nor what they import: structlog before logging is set up, rich, tuf).
COMMANDS = {
    "keys": "gateway.releases.commands",
    "release": "gateway.releases.commands",
    "gateway": "gateway.daemon_commands",
    "rollout": "gateway.rollouts.commands",
    "campaign": "gateway.campaigns.commands",
    "device": "gateway.devices.commands",
    "agent": "agent.commands",
    "verify": "agent.trust_commands",
    "update": "agent.updater.commands",
    "flash": "agent.mcu.commands",
    "mcu-sim": "firmware_sim.commands",
    "sim": "firmware_sim.fleet.commands",
    "demo": "firmware_sim.fleet.commands",
    "cloud": "cloud.commands",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))
VALUED_GLOBALS = ("--log-level", "--log-format")


def command_modules(argv: list[str] | None) -> tuple[str, ...]:
    """The module of the command ``argv`` names, or every module (for ``--help``, a mistyped
    command, or no ``argv``: the whole parser)."""
    words = iter(argv or ())
    for word in words:
        if word in VALUED_GLOBALS:
            next(words, None)
        elif not word.startswith("-"):
            module = COMMANDS.get(word)
            return (module,) if module in COMMAND_MODULES else COMMAND_MODULES
    return COMMAND_MODULES


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of the one ``argv`` names."""
    parser = Parser(
        prog="edgefleet",
        description="Keep ML models alive on fleets of embedded devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    add_global_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules(argv):
        importlib.import_module(name).register(subparsers)
    for _, sub in list(every_parser(parser))[1:]:
        add_global_options(sub, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        if (prepare := getattr(args, "prepare", None)) is not None:
            prepare(args)  # what a command must do before logging imports structlog
        logs.configure(args.log_level, lean=getattr(args, "lean", False), fmt=args.log_format)
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
