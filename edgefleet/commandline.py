"""What every ``edgefleet`` command shares, so that all of them speak one dialect: defaults
shown in ``--help``, ``--json`` for a result, ``--wide`` for tables, the global options anywhere
on the line, and the daemons' configuration found without ``--config``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgefleet.errors import UserError

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
CONFIG_VARIABLES = {"gateway": "EDGEFLEET_GATEWAY_CONFIG", "agent": "EDGEFLEET_AGENT_CONFIG"}


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose default says something (not None, not
    False, not empty) unless its help already shows it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or "%(default)" in text or not _meaningful(action.default):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _meaningful(default) -> bool:
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, list | tuple | str) and not default)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands are Parsers too, all with :class:`DefaultsFormatter`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--log-level`` and ``--log-format``. On the top parser they hold the defaults; on every
    subcommand they default to SUPPRESS, so one given after the command overrides the top's
    value and an absent one leaves it alone."""
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info" if top else argparse.SUPPRESS,
        help="log verbosity; logs go to stderr" + ("" if top else " (also before the command)"),
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None if top else argparse.SUPPRESS,
        help="log lines as JSON objects or readable text"
        + (
            " (default: console on a terminal, json otherwise)"
            if top
            else " (also before the command)"
        ),
    )


def every_parser(parser: argparse.ArgumentParser):
    """``(words, parser)`` for the parser and each subcommand below it, depth first."""
    stack = [((), parser)]
    while stack:
        words, current = stack.pop(0)
        yield words, current
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(((*words, name), sub) for name, sub in action.choices.items())


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print {what} as one JSON document on stdout"
    )


def add_table_options(parser: argparse.ArgumentParser, what: str = "the table") -> None:
    """``--json`` and ``--wide`` for a command that prints a table."""
    add_json(parser, what)
    parser.add_argument(
        "--wide",
        action="store_true",
        help="on a terminal, every column even past 80 characters (piped output has all)",
    )


def add_config(parser: argparse.ArgumentParser, role: str) -> None:
    """``--config`` of the ``gateway`` or ``agent``, found without it (see :func:`config_path`)."""
    parser.add_argument(
        "--config",
        type=Path,
        help=f"{role} TOML file (default: ${CONFIG_VARIABLES[role]}, else {default_config(role)})",
    )


def default_config(role: str) -> Path:
    return Path(f"/etc/edgefleet/{role}.toml")


def config_path(given: Path | None, role: str) -> Path:
    """``--config``, else the variable, else the file systemd's unit reads; one line if none."""
    variable = CONFIG_VARIABLES[role]
    path = given or Path(os.environ.get(variable) or default_config(role))
    if not path.is_file():
        how = "given by --config" if given else f"--config not given, ${variable} not set"
        if not given and os.environ.get(variable):
            how = f"from ${variable}"
        raise UserError(f"no {role} configuration at {path} ({how})")
    return path
