"""Receiving an image into the secondary slot, a sector at a time, so it can resume.

Chunks collect in a RAM buffer of one sector; a full sector is erased, written, then flagged
"uploaded" in the secondary trailer. After a power loss the MCU holds every flagged sector: it
reports that offset and the SHA-256 of those bytes, and the host sends only the rest.

A compressed upload (BEGIN with ``UploadFlag.DEFLATE``) arrives as one raw-deflate block per
sector (``protocol.serial.deflate``); each inflated block goes through the same erase, write,
flag, so the flags, the resume offset and the hashes are those of the image either way, and an
upload may resume compressed what began uncompressed, or the reverse. Its DATA offsets and
ACKs count compressed bytes from the resume point; the inflater never holds more than a sector.
"""

from __future__ import annotations

import hashlib

from firmware_sim import bootloader
from firmware_sim import layout as lay
from firmware_sim.bootloader import Verifier
from firmware_sim.flash import ERASED, Flash
from firmware_sim.layout import Layout, Slot
from firmware_sim.mcuboot_image import ImageError, SignatureError, VerifiedImage
from firmware_sim.refusal import Refused
from protocol.serial.deflate import BlockInflater, InflateError
from protocol.serial.messages import ErrorCode


class UploadStore:
    def __init__(self, flash: Flash, layout: Layout) -> None:
        self._flash = flash
        self._layout = layout
        self._size: int | None = None
        self._sha256 = b""
        self._received = 0
        self._buffer = bytearray()
        self._inflater: BlockInflater | None = None
        self._taken = 0

    def begin(
        self, size: int, sha256: bytes, restart: bool, deflate: bool = False
    ) -> tuple[int, bytes]:
        """Start or resume; returns the offset held and the SHA-256 of the bytes before it."""
        if size > self._layout.capacity:
            raise Refused(
                ErrorCode.TOO_LARGE,
                f"image of {size} bytes, slot holds {self._layout.capacity}",
            )
        if size == 0:
            raise Refused(ErrorCode.BAD_REQUEST, "empty image")
        trailer = self._layout.trailer(Slot.SECONDARY)
        record = lay.read_record(self._flash, trailer + lay.OFF_UPLOAD, lay.UPLOAD)
        if restart or record != (size, sha256):
            self._flash.erase(self._layout.trailer_sector(Slot.SECONDARY))
            lay.write_record(self._flash, trailer + lay.OFF_UPLOAD, lay.UPLOAD, size, sha256)
        self._size, self._sha256 = size, sha256
        self._received = self._held(size)
        self._buffer.clear()
        self._taken = 0
        self._inflater = None
        if deflate:
            self._inflater = BlockInflater(size, self._layout.sector_size, self._received)
        return self._received, hashlib.sha256(self._read(self._received)).digest()

    def accept(self, offset: int, chunk: bytes) -> int:
        """Take a chunk if it is the next one; returns the next offset expected (the ACK)."""
        if self._size is None:
            raise Refused(ErrorCode.BAD_STATE, "DATA before BEGIN")
        if self._inflater is not None:
            raise Refused(ErrorCode.BAD_STATE, "DATA in a compressed upload: send DEFLATE_DATA")
        if offset != self._received:
            return self._received
        if offset + len(chunk) > self._size:
            raise Refused(ErrorCode.BAD_REQUEST, "DATA past the announced size")
        self._buffer += chunk
        self._received += len(chunk)
        sector = self._layout.sector_size
        while len(self._buffer) >= sector or (self._buffer and self._received == self._size):
            self._flush((self._received - len(self._buffer)) // sector, self._buffer[:sector])
            del self._buffer[:sector]
        return self._received

    def accept_deflate(self, offset: int, chunk: bytes) -> int:
        """Take compressed bytes if they are the next ones; returns the compressed ACK offset.

        Each block the chunk completes is written and flagged before the ACK. Bytes that do not
        inflate to the image end the upload: the host must BEGIN again.
        """
        if self._size is None:
            raise Refused(ErrorCode.BAD_STATE, "DEFLATE_DATA before BEGIN")
        if self._inflater is None:
            raise Refused(ErrorCode.BAD_STATE, "DEFLATE_DATA in an uncompressed upload")
        if offset != self._taken:
            return self._taken
        try:
            blocks = self._inflater.feed(chunk)
        except InflateError as exc:
            self._size = None
            raise Refused(ErrorCode.BAD_REQUEST, str(exc)) from exc
        self._taken += len(chunk)
        for index, data in blocks:
            self._flush(index, data)
            self._received = min((index + 1) * self._layout.sector_size, self._size)
        return self._taken

    def finish(self, verifier: Verifier) -> VerifiedImage:
        """Check the whole upload against the announced hash, then as an MCUboot image."""
        if self._size is None or self._received != self._size:
            raise Refused(ErrorCode.BAD_STATE, "upload not complete")
        if hashlib.sha256(self._read(self._size)).digest() != self._sha256:
            raise Refused(ErrorCode.HASH_MISMATCH, "uploaded bytes do not match the hash")
        try:
            return bootloader.check_slot(self._flash, self._layout, Slot.SECONDARY, verifier)
        except SignatureError as exc:
            raise Refused(ErrorCode.SIGNATURE, str(exc)) from exc
        except ImageError as exc:
            raise Refused(ErrorCode.IMAGE_INVALID, str(exc)) from exc

    def _held(self, size: int) -> int:
        sector = self._layout.sector_size
        count = 0
        while count * sector < size and lay.flag_set(
            self._flash, self._layout.uploaded_offset(count)
        ):
            count += 1
        return min(count * sector, size)

    def _flush(self, index: int, data: bytes) -> None:
        sector = self._layout.sector(Slot.SECONDARY, index)
        align = self._layout.write_align
        self._flash.erase(sector)
        self._flash.write(
            sector * self._layout.sector_size, bytes(data) + bytes([ERASED]) * (-len(data) % align)
        )
        lay.set_flag(self._flash, self._layout.uploaded_offset(index))

    def _read(self, length: int) -> bytes:
        return self._flash.read(self._layout.base(Slot.SECONDARY), length)
