"""MCUboot-style bootloader: swap with scratch, test then confirm, revert if unconfirmed.

``boot`` is what runs at every power-on. In order:

1. A swap whose header is in the primary trailer but whose copy_done is not set was cut by a
   power loss: finish it from the status flags (each step is redone whole, which is safe
   because a step's source is not touched until the next step).
2. A swap request in the secondary trailer (TEST from the application, or REVERT written by
   step 3): verify the secondary image (hash and signature); refuse it by erasing the request,
   or start the swap: erase primary trailer, write swap header, erase secondary trailer, swap.
3. The primary runs a TEST image that was never confirmed: write a REVERT request and do 2.

A swap exchanges the first ``n`` image sectors through the scratch sector, three steps per
sector (secondary→scratch, primary→secondary, scratch→primary), each followed by its status
flag. The functions the application calls (``request_test``, ``confirm``, ``request_revert``)
live here too, as MCUboot's bootutil offers them to applications.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_sim import layout as lay
from firmware_sim.flash import Flash
from firmware_sim.layout import BOOT_MAGIC, Layout, Slot, SwapType
from firmware_sim.mcuboot_image import ImageError, VerifiedImage, image_extent, verify


@dataclass(frozen=True)
class Verifier:
    """How this MCU judges images: its trusted keys, and whether a signature is required."""

    trusted: tuple[Ed25519PublicKey, ...] = ()
    require_signature: bool = True

    def check(self, data: bytes) -> VerifiedImage:
        return verify(data, list(self.trusted), self.require_signature)


@dataclass(frozen=True)
class SlotTrailers:
    """What both trailers say, read in one go."""

    swap_type: SwapType | None
    swap_sectors: int
    copy_done: bool
    image_ok: bool
    request: SwapType | None

    @property
    def swap_in_progress(self) -> bool:
        return self.swap_type is not None and not self.copy_done

    @property
    def on_trial(self) -> bool:
        """The primary holds a tested image that nobody confirmed yet."""
        return self.swap_type == SwapType.TEST and self.copy_done and not self.image_ok


@dataclass(frozen=True)
class BootResult:
    image: VerifiedImage | None
    trailers: SlotTrailers


def read_trailers(flash: Flash, layout: Layout) -> SlotTrailers:
    primary = layout.trailer(Slot.PRIMARY)
    secondary = layout.trailer(Slot.SECONDARY)
    header = lay.read_record(flash, primary + lay.OFF_SWAP_HEADER, lay.SWAP_HEADER)
    swap_type, sectors = None, 0
    if header and header[0] == BOOT_MAGIC and header[1] in SwapType._value2member_map_:
        swap_type, sectors = SwapType(header[1]), min(header[2], layout.image_sectors)
    request = lay.read_record(flash, secondary + lay.OFF_REQUEST, lay.REQUEST)
    pending = None
    if request and request[0] == BOOT_MAGIC and request[1] in SwapType._value2member_map_:
        pending = SwapType(request[1])
    return SlotTrailers(
        swap_type,
        sectors,
        lay.flag_set(flash, primary + lay.OFF_COPY_DONE),
        lay.flag_set(flash, primary + lay.OFF_IMAGE_OK),
        pending,
    )


def slot_bytes(flash: Flash, layout: Layout, slot: Slot) -> bytes:
    return flash.read(layout.base(slot), layout.capacity)


def check_slot(flash: Flash, layout: Layout, slot: Slot, verifier: Verifier) -> VerifiedImage:
    return verifier.check(slot_bytes(flash, layout, slot))


def boot(flash: Flash, layout: Layout, verifier: Verifier) -> BootResult:
    """Power-on: finish or start a swap as the trailers say, then verify the primary image."""
    trailers = read_trailers(flash, layout)
    if trailers.swap_in_progress:
        _erase_if_needed(flash, layout.trailer_sector(Slot.SECONDARY), layout)
        _run_swap(flash, layout, trailers.swap_type, trailers.swap_sectors)
    elif trailers.request is not None:
        _start_swap(flash, layout, verifier, trailers.request)
    elif trailers.on_trial:
        request_revert(flash, layout)
        _start_swap(flash, layout, verifier, SwapType.REVERT)
    trailers = read_trailers(flash, layout)
    try:
        image = check_slot(flash, layout, Slot.PRIMARY, verifier)
    except ImageError:
        image = None
    return BootResult(image, trailers)


def _start_swap(flash: Flash, layout: Layout, verifier: Verifier, kind: SwapType) -> None:
    try:
        incoming = check_slot(flash, layout, Slot.SECONDARY, verifier)
    except ImageError:
        flash.erase(layout.trailer_sector(Slot.SECONDARY))
        if kind == SwapType.REVERT:
            lay.set_flag(flash, layout.trailer(Slot.PRIMARY) + lay.OFF_IMAGE_OK)
        return
    try:
        current = image_extent(slot_bytes(flash, layout, Slot.PRIMARY))
    except ImageError:
        current = layout.capacity
    sectors = math.ceil(max(current, incoming.total_size) / layout.sector_size)
    primary_trailer = layout.trailer(Slot.PRIMARY)
    flash.erase(layout.trailer_sector(Slot.PRIMARY))
    lay.write_record(flash, primary_trailer, lay.SWAP_HEADER, BOOT_MAGIC, kind, sectors)
    flash.erase(layout.trailer_sector(Slot.SECONDARY))
    _run_swap(flash, layout, kind, sectors)


def _run_swap(flash: Flash, layout: Layout, kind: SwapType, sectors: int) -> None:
    steps = (
        (Slot.SECONDARY, None),
        (Slot.PRIMARY, Slot.SECONDARY),
        (None, Slot.PRIMARY),
    )
    for index in range(sectors):
        for step, (source, target) in enumerate(steps):
            status = layout.status_offset(index, step)
            if lay.flag_set(flash, status):
                continue
            src = layout.scratch if source is None else layout.sector(source, index)
            dst = layout.scratch if target is None else layout.sector(target, index)
            _copy_sector(flash, layout, src, dst)
            lay.set_flag(flash, status)
    primary_trailer = layout.trailer(Slot.PRIMARY)
    lay.set_flag(flash, primary_trailer + lay.OFF_COPY_DONE)
    if kind == SwapType.REVERT:
        lay.set_flag(flash, primary_trailer + lay.OFF_IMAGE_OK)


def _copy_sector(flash: Flash, layout: Layout, source: int, target: int) -> None:
    size = layout.sector_size
    data = flash.read(source * size, size)
    flash.erase(target)
    if not lay.is_blank(data):
        flash.write(target * size, data)


def _erase_if_needed(flash: Flash, sector: int, layout: Layout) -> None:
    if not flash.is_erased(sector * layout.sector_size, layout.sector_size):
        flash.erase(sector)


def _write_request(flash: Flash, layout: Layout, kind: SwapType) -> None:
    offset = layout.trailer(Slot.SECONDARY) + lay.OFF_REQUEST
    current = read_trailers(flash, layout).request
    if current == kind:
        return
    if not lay.record_area_erased(flash, offset):
        flash.erase(layout.trailer_sector(Slot.SECONDARY))
    lay.write_record(flash, offset, lay.REQUEST, BOOT_MAGIC, kind)


def request_test(flash: Flash, layout: Layout) -> None:
    """Ask the next boot to swap the secondary image in on trial."""
    _write_request(flash, layout, SwapType.TEST)


def request_revert(flash: Flash, layout: Layout) -> None:
    """Ask the next boot to swap the previous image (now in the secondary slot) back in."""
    _write_request(flash, layout, SwapType.REVERT)


def confirm(flash: Flash, layout: Layout) -> None:
    """Keep the running image: the next boot will not revert it."""
    if read_trailers(flash, layout).on_trial:
        lay.set_flag(flash, layout.trailer(Slot.PRIMARY) + lay.OFF_IMAGE_OK)
