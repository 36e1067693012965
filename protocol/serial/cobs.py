"""Consistent Overhead Byte Stuffing: a frame body without any 0x00, so 0x00 can end a frame.

The receiver finds frame boundaries by scanning for a single byte value, so a corrupted or
truncated frame costs only that frame: the next 0x00 resynchronises the stream.
"""

from __future__ import annotations

from protocol.serial.errors import CodecError


def encode(data: bytes) -> bytes:
    """Stuff ``data``; the result contains no 0x00 (the caller appends the delimiter).

    Each run between zeros becomes ``len+1 | run``; a run of 254 bytes or more is cut into
    ``0xFF | 254 bytes`` blocks, which imply no zero after them.
    """
    out = bytearray()
    for run in data.split(b"\x00"):
        while len(run) >= 254:
            out.append(255)
            out += run[:254]
            run = run[254:]
        out.append(len(run) + 1)
        out += run
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Unstuff one frame body (without its delimiter); raise CodecError if it is malformed."""
    out = bytearray()
    index = 0
    length = len(data)
    while index < length:
        code = data[index]
        if code == 0:
            raise CodecError("zero byte inside a COBS block")
        end = index + code
        if end > length:
            raise CodecError("COBS block runs past the end of the frame")
        block = data[index + 1 : end]
        if 0 in block:
            raise CodecError("zero byte inside a COBS block")
        out += block
        index = end
        if code != 255 and index < length:
            out.append(0)
    return bytes(out)
