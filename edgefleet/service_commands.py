"""``edgefleet agent|gateway install-service``: registered by both parts' ``commands``
modules; the work is in :mod:`edgefleet.service`, imported only when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction, role: str) -> None:
    """Add ``install-service`` to the ``agent`` or ``gateway`` subcommands."""
    parser = commands.add_parser(
        "install-service",
        help=f"install the {role}'s systemd unit, system user, state directory and an example "
        "configuration",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="install under this folder, e.g. a package's staging folder",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be written")
    parser.add_argument(
        "--enable",
        action="store_true",
        help="then create the user and directory and run systemctl daemon-reload and "
        "enable --now (root / only; the configuration must exist)",
    )
    parser.add_argument("--json", action="store_true", help="JSON for scripts")
    parser.set_defaults(handler=install, service_role=role)


def install(args: argparse.Namespace) -> int:
    from edgefleet import service

    return service.install(args)
