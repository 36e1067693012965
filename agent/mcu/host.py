"""The agent's MCU host: put an image on an attached MCU, or ask what it runs.

The agent verifies an MCU image with TUF before it calls ``install``; the MCU then verifies the
image itself (hash and Ed25519 signature) before it swaps. ``edgefleet flash`` is the same call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.mcu.client import LinkConfig, McuClient
from agent.mcu.flasher import FlashResult, flash_image
from agent.mcu.transport import open_transport
from protocol.serial.messages import InfoReply


@dataclass(frozen=True)
class McuPort:
    """Where an MCU is attached: a serial device, a pty, or ``socket://HOST:PORT``."""

    port: str
    baud: int = 115200
    timeout: float = 1.0

    def link(self) -> LinkConfig:
        return LinkConfig(timeout=self.timeout, line_rate=self.baud / 10)


def install(
    target: McuPort,
    image: bytes,
    *,
    confirm: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FlashResult:
    """Upload (resuming), test, reboot, smoke-test and, if ``confirm``, keep ``image``."""
    transport = open_transport(target.port, target.baud)
    try:
        client = McuClient(transport, target.link())
        return flash_image(client, image, confirm=confirm, progress=progress)
    finally:
        transport.close()


def query(target: McuPort) -> InfoReply:
    """Slots, versions, geometry and model state of the attached MCU."""
    transport = open_transport(target.port, target.baud)
    try:
        client = McuClient(transport, target.link())
        client.hello()
        return client.info()
    finally:
        transport.close()
