"""NOR flash model, stricter than hardware, with power cuts injected at one choke point.

Rules (violations raise ``FlashError``, a bug in the caller, never a power effect): erase whole
sectors only; write only at ``write_align``-aligned offsets and lengths; write only onto erased
bytes (0xFF). Every erase and write passes through ``_operation``: that is where ``PowerCut``
counts operations and, at the chosen one, stops the world, optionally after a torn write or a
partial erase.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

ERASED = 0xFF


class FlashError(Exception):
    """An operation real flash would not do correctly (misaligned, write onto written bytes)."""


class PowerLoss(Exception):
    """The power went: the device stops here and boots again later."""


@dataclass(frozen=True)
class Geometry:
    sector_size: int = 4096
    sector_count: int = 33
    write_align: int = 8

    @property
    def size(self) -> int:
        return self.sector_size * self.sector_count


@dataclass
class PowerCut:
    """Cut the power at operation number ``at`` (1-based); ``torn`` leaves it half done."""

    at: int | None = None
    torn: bool = False
    count: int = 0

    def hit(self) -> bool:
        self.count += 1
        return self.count == self.at


class Flash:
    """A flash device over a bytearray or a file (a file persists across process restarts)."""

    def __init__(self, geometry: Geometry, storage: bytearray | mmap.mmap | None = None) -> None:
        self.geometry = geometry
        self._mem = storage if storage is not None else bytearray([ERASED]) * geometry.size
        if len(self._mem) != geometry.size:
            raise FlashError(f"storage of {len(self._mem)} bytes for {geometry.size}-byte flash")
        self.power = PowerCut()

    @classmethod
    def open_file(cls, path: str | os.PathLike[str], geometry: Geometry) -> Flash:
        """Flash backed by ``path`` (created erased if missing): a restart is a power cycle."""
        target = Path(path)
        if not target.exists():
            target.write_bytes(bytes([ERASED]) * geometry.size)
        if target.stat().st_size != geometry.size:
            raise FlashError(f"{target} is not a {geometry.size}-byte flash image")
        with target.open("r+b") as handle:
            storage = mmap.mmap(handle.fileno(), geometry.size)
        return cls(geometry, storage)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        return bytes(self._mem[offset : offset + length])

    def erase(self, sector: int) -> None:
        if not 0 <= sector < self.geometry.sector_count:
            raise FlashError(f"erase of sector {sector} outside the device")
        start = sector * self.geometry.sector_size
        size = self.geometry.sector_size
        self._operation(lambda part: self._fill(start, size if part else size // 2))

    def write(self, offset: int, data: bytes) -> None:
        align = self.geometry.write_align
        if offset % align or len(data) % align:
            raise FlashError(f"write of {len(data)} bytes at {offset:#x} not {align}-aligned")
        self._check_range(offset, len(data))
        if not self.is_erased(offset, len(data)):
            raise FlashError(f"write at {offset:#x} onto bytes that are not erased")
        half = (len(data) // 2) // align * align

        def apply(whole: bool) -> None:
            part = data if whole else data[:half]
            self._mem[offset : offset + len(part)] = part

        self._operation(apply)

    def _operation(self, apply) -> None:
        """The one choke point: count the operation, maybe cut the power around it."""
        if not self.power.hit():
            apply(True)
            return
        if self.power.torn:
            apply(False)
        raise PowerLoss(f"power cut at flash operation {self.power.count}")

    def _fill(self, start: int, length: int) -> None:
        self._mem[start : start + length] = bytes([ERASED]) * length

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.geometry.size:
            raise FlashError(f"access of {length} bytes at {offset:#x} outside the device")

    def is_erased(self, offset: int, length: int) -> bool:
        self._check_range(offset, length)
        return self._mem[offset : offset + length] == bytes([ERASED]) * length

    def snapshot(self) -> bytes:
        return bytes(self._mem)
