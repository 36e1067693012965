"""Where things live in flash: two slots and a scratch sector, and each slot's trailer.

``[primary: N sectors][secondary: N sectors][scratch: 1 sector]``. The last sector of each slot
is its trailer and is never swapped; images live in the first N-1 sectors.

Trailer records are written once onto erased flash. A record (``payload | CRC32``) counts only
if its CRC matches, so a torn record reads as absent. A flag (copy_done, image_ok, a swap
status step, an uploaded sector) is one ``write_align`` unit and counts as set as soon as any
byte of it is not erased: it is written only after the work it records is complete, so even a
torn flag tells the truth.

Primary trailer: swap header (magic, swap type, sectors to swap) at 0, copy_done at 32,
image_ok at 48, swap status (three steps per sector) from 64. Secondary trailer: swap request
(magic, type) at 0, upload record (size, SHA-256) at 32, one "sector uploaded" flag per sector
from 128.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from firmware_sim.flash import ERASED, Flash, Geometry

BOOT_MAGIC = bytes.fromhex("77c295f360d2ef7f3552500f2cb67980")
SWAP_HEADER = struct.Struct("<16sBxH")
REQUEST = struct.Struct("<16sB")
UPLOAD = struct.Struct("<I32s")
CRC = struct.Struct("<I")

OFF_SWAP_HEADER = 0
OFF_COPY_DONE = 32
OFF_IMAGE_OK = 48
OFF_STATUS = 64
OFF_REQUEST = 0
OFF_UPLOAD = 32
OFF_UPLOADED = 128
RECORD_ROOM = 32


class SwapType(enum.IntEnum):
    TEST = 1
    REVERT = 2


class Slot(enum.IntEnum):
    PRIMARY = 0
    SECONDARY = 1


@dataclass(frozen=True)
class Layout:
    sector_size: int = 4096
    slot_sectors: int = 16
    write_align: int = 8

    def __post_init__(self) -> None:
        if self.write_align not in (1, 2, 4, 8, 16):
            raise ValueError(f"write alignment {self.write_align} not supported")
        status_end = OFF_STATUS + 3 * (self.slot_sectors - 1) * self.write_align
        uploaded_end = OFF_UPLOADED + (self.slot_sectors - 1) * self.write_align
        if max(status_end, uploaded_end) > self.sector_size:
            raise ValueError("trailer does not fit in one sector")

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.sector_size, 2 * self.slot_sectors + 1, self.write_align)

    @property
    def slot_size(self) -> int:
        return self.slot_sectors * self.sector_size

    @property
    def image_sectors(self) -> int:
        return self.slot_sectors - 1

    @property
    def capacity(self) -> int:
        """Largest image a slot holds (everything but the trailer sector)."""
        return self.image_sectors * self.sector_size

    @property
    def scratch(self) -> int:
        return 2 * self.slot_sectors

    def sector(self, slot: Slot, index: int) -> int:
        return slot * self.slot_sectors + index

    def base(self, slot: Slot) -> int:
        return self.sector(slot, 0) * self.sector_size

    def trailer_sector(self, slot: Slot) -> int:
        return self.sector(slot, self.image_sectors)

    def trailer(self, slot: Slot) -> int:
        return self.trailer_sector(slot) * self.sector_size

    def status_offset(self, index: int, step: int) -> int:
        return self.trailer(Slot.PRIMARY) + OFF_STATUS + (3 * index + step) * self.write_align

    def uploaded_offset(self, index: int) -> int:
        return self.trailer(Slot.SECONDARY) + OFF_UPLOADED + index * self.write_align


def pack_record(payload: bytes, align: int) -> bytes:
    """``payload | CRC32`` padded with zeros to the write alignment."""
    raw = payload + CRC.pack(zlib.crc32(payload))
    return raw + bytes(-len(raw) % align)


def read_record(flash: Flash, offset: int, layout: struct.Struct) -> tuple | None:
    """The record's fields, or None if it is absent or torn."""
    raw = flash.read(offset, layout.size + CRC.size)
    (crc,) = CRC.unpack_from(raw, layout.size)
    if zlib.crc32(raw[: layout.size]) != crc:
        return None
    return layout.unpack_from(raw)


def write_record(flash: Flash, offset: int, layout: struct.Struct, *fields) -> None:
    flash.write(offset, pack_record(layout.pack(*fields), flash.geometry.write_align))


def flag_set(flash: Flash, offset: int) -> bool:
    return not flash.is_erased(offset, flash.geometry.write_align)


def set_flag(flash: Flash, offset: int) -> None:
    if not flag_set(flash, offset):
        flash.write(offset, b"\x01" * flash.geometry.write_align)


def record_area_erased(flash: Flash, offset: int) -> bool:
    return flash.is_erased(offset, RECORD_ROOM)


def is_blank(data: bytes) -> bool:
    return data.count(ERASED) == len(data)
