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
    # A device daemon: logging leaves out what only a terminal needs (see edgefleet.logs).
    run_parser.set_defaults(handler=run, lean=True)
    service_commands.register(commands, "agent")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from agent import config, daemon

    return asyncio.run(daemon.run(config.load(config_path(args.config, "agent"))))
