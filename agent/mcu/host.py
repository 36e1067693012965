"""The agent's MCU host: put an image on an attached MCU, or ask what it runs.

The agent verifies an MCU image with TUF before it calls ``install``; the MCU then verifies the
image itself (hash and Ed25519 signature) before it swaps. ``edgefleet flash`` is the same call.
``open_device`` gives the ``McuDevice`` for the port's protocol (``agent.mcu.device``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.mcu.client import LinkConfig, McuClient
from agent.mcu.device import PROTOCOLS, McuDevice
from agent.mcu.flasher import FlashResult, flash_image, running
from agent.mcu.transport import open_transport
from protocol.serial.messages import InfoReply, SlotInfo


@dataclass(frozen=True)
class McuPort:
    """Where an MCU is attached: a serial device, a pty, or ``socket://HOST:PORT``."""

    port: str
    baud: int = 115200
    timeout: float = 1.0
    protocol: str = "edgefleet"  # or "smp"
    compress: bool = True
    """Send the image deflated when the MCU offers it (edgefleet protocol only)."""

    def link(self) -> LinkConfig:
        return LinkConfig(timeout=self.timeout, line_rate=self.baud / 10, deflate=self.compress)


class EdgefleetDevice:
    """An MCU that speaks edgefleet's serial protocol."""

    def __init__(self, target: McuPort) -> None:
        self.target = target

    def install(self, image: bytes, *, confirm: bool = True, progress=None) -> FlashResult:
        return install(self.target, image, confirm=confirm, progress=progress)

    def query(self) -> InfoReply:
        return query(self.target)

    def runs(self, slot: SlotInfo, image: bytes) -> bool:
        return running(slot, image)


class SmpDevice:
    """An MCU that speaks SMP (mcumgr): Zephyr with MCUboot."""

    def __init__(self, target: McuPort) -> None:
        self.target = target

    def install(self, image: bytes, *, confirm: bool = True, progress=None) -> FlashResult:
        from agent.mcu import smp_host  # smpclient: loaded only for SMP devices

        return smp_host.install(self.target, image, confirm=confirm, progress=progress)

    def query(self) -> InfoReply:
        from agent.mcu import smp_host

        return smp_host.query(self.target)

    def runs(self, slot: SlotInfo, image: bytes) -> bool:
        from agent.mcu import smp_host

        return smp_host.runs(slot, image)


def open_device(target: McuPort) -> McuDevice:
    if target.protocol not in PROTOCOLS:
        raise ValueError(f"unknown MCU protocol {target.protocol!r}")
    return SmpDevice(target) if target.protocol == "smp" else EdgefleetDevice(target)


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
