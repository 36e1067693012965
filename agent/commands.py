"""``edgefleet agent run [--config agent.toml]``: the device daemon; ``edgefleet agent
install-service``: its systemd service."""

from __future__ import annotations

import argparse

from edgefleet import service_commands
from edgefleet.commandline import add_config, config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agent", help="the device agent")
    commands = parser.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run_parser = commands.add_parser(
        "run", help="run the agent daemon: inference, telemetry spool, MQTT link, drift"
    )
    add_config(run_parser, "agent")
    # A device daemon: logging leaves out what only a terminal needs (see edgefleet.logs), and
    # the process what its configuration does not use (``prepare``).
    run_parser.set_defaults(handler=run, lean=True, prepare=prepare)
    service_commands.register(commands, "agent")


def prepare(args: argparse.Namespace) -> None:
    """Before anything starts a thread or imports ssl (logging imports asyncio, which does): two
    malloc arenas, and no TLS stack with an ``mqtt://`` broker (see agent.lean)."""
    from agent import lean
    from edgefleet import memory

    memory.limit_arenas(2)
    if lean.plain_mqtt(config_path(args.config, "agent")):
        lean.leave_out_tls()


def run(args: argparse.Namespace) -> int:
    import asyncio

    from agent import config, daemon

    return asyncio.run(daemon.run(config.load(config_path(args.config, "agent"))))
