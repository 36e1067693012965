"""Frames on the wire: ``COBS(type | seq | payload | CRC32) 0x00``.

``type`` is one byte, ``seq`` a little-endian u16 the reply echoes, the CRC-32 (zlib's
polynomial, little-endian) covers type, seq and payload. ``FrameDecoder`` cuts a byte stream
into frames; a bad frame becomes a ``CodecError`` for that frame only, the stream goes on.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from protocol.serial import cobs
from protocol.serial.errors import CodecError

DELIMITER = b"\x00"
HEADER = struct.Struct("<BH")
CRC = struct.Struct("<I")
MIN_BODY = HEADER.size + CRC.size


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""


def encode_frame(frame: Frame) -> bytes:
    """The bytes to put on the wire for ``frame``, delimiter included."""
    body = HEADER.pack(frame.type, frame.seq & 0xFFFF) + frame.payload
    return cobs.encode(body + CRC.pack(zlib.crc32(body))) + DELIMITER


def decode_frame(stuffed: bytes) -> Frame:
    """Decode one frame body as found between delimiters; raise CodecError if it is bad."""
    body = cobs.decode(stuffed)
    if len(body) < MIN_BODY:
        raise CodecError(f"frame of {len(body)} bytes is shorter than {MIN_BODY}")
    (crc,) = CRC.unpack_from(body, len(body) - CRC.size)
    content = body[: -CRC.size]
    if zlib.crc32(content) != crc:
        raise CodecError("frame CRC mismatch")
    kind, seq = HEADER.unpack_from(content)
    return Frame(kind, seq, content[HEADER.size :])


class FrameDecoder:
    """Cuts a byte stream into frames; frames longer than ``max_frame`` are skipped whole."""

    def __init__(self, max_frame: int) -> None:
        self._max = max_frame
        self._buffer = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> Iterator[Frame | CodecError]:
        """Yield every frame (or the error for a bad one) completed by ``data``."""
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                self._append(data[start:])
                return
            self._append(data[start:end])
            start = end + 1
            stuffed, overflow = bytes(self._buffer), self._overflow
            self._buffer.clear()
            self._overflow = False
            if overflow:
                yield CodecError(f"frame longer than {self._max} bytes")
            elif stuffed:
                try:
                    yield decode_frame(stuffed)
                except CodecError as exc:
                    yield exc

    def _append(self, chunk: bytes) -> None:
        if self._overflow:
            return
        if len(self._buffer) + len(chunk) > self._max:
            self._overflow = True
            self._buffer.clear()
            return
        self._buffer += chunk
