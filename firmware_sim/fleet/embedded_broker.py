"""The simulator's broker when mosquitto is not installed: amqtt (pure Python, MQTT 3.1.1) in a
process of its own on a loopback port, so a simulated fleet runs with no service installed.

It accepts anonymous clients and checks no ACL (every client on its port is the simulator's
own), and it keeps no state across a restart, so broker faults need mosquitto. The gateway
speaks MQTT 3.1.1 to it (``mqtt.protocol``): amqtt has neither MQTT 5 nor shared subscriptions.

``python -m firmware_sim.fleet.embedded_broker --port N`` serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
from pathlib import Path

from edgefleet.processes import start_python, terminate, wait_listening
from firmware_sim.broker import BrokerError

EMBEDDED = "embedded"  # the value of ``--broker`` that asks for this broker
# Clients must give a user name (any password): amqtt keeps no session of an anonymous client.
PLUGINS = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}}


class EmbeddedBroker:
    """The broker process; the same start/stop/url surface as ``firmware_sim.broker.Mosquitto``."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The running process's id, for the simulator's CPU and memory sampler."""
        return self._proc.pid if self.running else None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "broker.log"
        self._proc = start_python(__name__, ["--port", str(self.port)], log)
        why = wait_listening(self._proc, "127.0.0.1", self.port, timeout)
        if why is not None:
            self.stop()
            raise BrokerError(f"the built-in broker did not start ({why}); see {log}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            terminate(self._proc, timeout)
        self._proc = None


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": PLUGINS,
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
