"""What the worker and ``edgefleet flash`` need from an attached MCU, whatever it speaks.

``McuPort.protocol`` picks the implementation: ``edgefleet`` (this project's serial protocol,
``agent.mcu.client``) or ``smp`` (mcumgr, as Zephyr with MCUboot speaks it, through smpclient:
``agent.mcu.smp_host``). Both answer ``query`` with the edgefleet protocol's ``InfoReply``, so
the rules on versions, downgrades and what an MCU keeps are written once; ``runs`` says how
that protocol recognises an image in a slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from agent.mcu.flasher import FlashResult
from protocol.serial.messages import InfoReply, SlotInfo

PROTOCOLS = ("edgefleet", "smp")


class McuDevice(Protocol):
    def install(
        self,
        image: bytes,
        *,
        confirm: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> FlashResult:
        """Upload (resuming), test, reboot and, if ``confirm``, keep ``image``."""

    def query(self) -> InfoReply:
        """The slots and what they hold."""

    def runs(self, slot: SlotInfo, image: bytes) -> bool:
        """Whether ``slot``, as ``query`` reported it, holds ``image``."""
