"""Putting an image on an MCU: upload (resuming), test swap, reboot, smoke test, confirm.

Running it again is safe: an MCU that already runs the image (say, on trial after the host
died) only gets the smoke test and the confirmation.

The order is the safety argument: the MCU verifies the image (hash, then signature) before it
agrees to a test swap; after the reboot the host checks that the MCU runs exactly the bytes it
sent and that the model answers one inference; only then, and only if asked, it confirms. An
unconfirmed image is reverted by the MCU's next boot, so a host that dies half way leaves the
MCU on a verified image either way.

The upload is compressed (one raw-deflate block per flash sector) when both sides offered it in
HELLO and the blocks are smaller than the image; otherwise it goes as it is. Either way the
hashes the MCU checks are those of the image itself.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import structlog

from agent.mcu.client import McuClient, UploadStats
from agent.mcu.errors import ImageTooLarge, Refusal, SwapFailed
from protocol.serial.deflate import deflate_blocks
from protocol.serial.messages import Feature, ModelState, SlotFlag, SlotInfo

log = structlog.get_logger()


@dataclass(frozen=True)
class FlashResult:
    """What happened, for the operator's line or ``--json``."""

    device: str
    image_size: int
    resumed_from: int
    bytes_sent: int
    retransmits: int
    upload_seconds: float
    version: str
    confirmed: bool
    model_state: str
    inference_micros: int | None
    compressed: bool = False
    """The upload went as deflate blocks; ``bytes_sent`` then counts compressed bytes."""

    def as_dict(self) -> dict:
        return asdict(self)


def running(slot: SlotInfo, image: bytes) -> bool:
    return slot.image_size == len(image) and slot.sha256 == hashlib.sha256(image).digest()


def flash_image(
    client: McuClient,
    image: bytes,
    *,
    confirm: bool,
    progress: Callable[[int, int], None] | None = None,
    boot_timeout: float = 30.0,
) -> FlashResult:
    """Make the MCU run ``image`` (kept if ``confirm``); McuError subclasses say what failed."""
    hello = client.hello()
    info = client.info()
    if len(image) > info.max_image_size:
        raise ImageTooLarge(f"{len(image)} bytes, the slot holds {info.max_image_size}")
    start, stats, upload_seconds = len(image), UploadStats(len(image), 0, 0), 0.0
    if not running(info.primary, image):
        blocks = None
        if client.deflate_offered():
            blocks = deflate_blocks(image, info.sector_size)
            if sum(map(len, blocks)) >= len(image):
                blocks = None
        start = client.resume_point(image, deflate=blocks is not None)
        log.info(
            "mcu.upload",
            size=len(image),
            resume_from=start,
            device=hello.device,
            compressed=blocks is not None,
        )
        report = (lambda done: progress(done, len(image))) if progress else None
        began = time.monotonic()
        if blocks is None:
            stats = client.send_data(image, start, report)
        else:
            stats = client.send_deflate(image, info.sector_size, start, report, blocks)
        upload_seconds = time.monotonic() - began
        client.finish()
        client.test()
        client.reboot()
        client.wait_for_boot(boot_timeout)
        info = client.info()
        if not running(info.primary, image):
            raise SwapFailed(f"the MCU still runs version {info.primary.version_text}")
    micros = None
    if hello.features & Feature.INFER:
        try:
            micros = client.infer().micros
        except Refusal:
            log.warning("mcu.smoke_failed", model_state=info.model_state.name)
            client.revert()
            client.reboot()
            client.wait_for_boot(boot_timeout)
            raise
    if confirm:
        client.confirm()
    confirmed = confirm or bool(info.primary.flags & SlotFlag.CONFIRMED)
    return FlashResult(
        device=hello.device,
        image_size=len(image),
        resumed_from=start,
        bytes_sent=stats.bytes_sent,
        retransmits=stats.retransmits,
        upload_seconds=upload_seconds,
        compressed=stats.deflate,
        version=info.primary.version_text,
        confirmed=confirmed,
        model_state=ModelState(info.model_state).name,
        inference_micros=micros,
    )
