"""Deltas a hostile gateway could sign: containers whose header says whatever it likes (the
container digest is no obstacle, anyone can compute it), and payloads that inflate far beyond
what they declare."""

from __future__ import annotations

import bz2
import hashlib
import struct
import zlib

import bsdiff4.core

from protocol.delta import FORMAT_VERSION, MAGIC, Algorithm

MiB = 1 << 20
_HEADER = struct.Struct(">4sBB32s32sQQ")  # as docs/architecture.md lays the container out


def container(
    algorithm: Algorithm, source_sha256: bytes, target_sha256: bytes, length: int, payload: bytes
) -> bytes:
    body = _HEADER.pack(
        MAGIC, FORMAT_VERSION, algorithm, source_sha256, target_sha256, length, len(payload)
    )
    body += payload
    return body + hashlib.sha256(body).digest()


def zeros_zlib(size: int) -> bytes:
    """A zlib stream of ``size`` zero bytes (about a thousandth of that)."""
    chunk, encoder = bytes(MiB), zlib.compressobj(1)
    return b"".join(encoder.compress(chunk) for _ in range(size // MiB)) + encoder.flush()


def zeros_bz2(size: int) -> bytes:
    """A bz2 stream of ``size`` zero bytes (a few hundred bytes)."""
    chunk, encoder = bytes(MiB), bz2.BZ2Compressor(9)
    return b"".join(encoder.compress(chunk) for _ in range(size // MiB)) + encoder.flush()


def bsdiff4_payload(new_size: int, control: bytes, diff: bytes, extra: bytes) -> bytes:
    """A BSDIFF40 patch from already compressed streams, declaring ``new_size``."""
    sizes = (len(control), len(diff), new_size)
    return (
        b"BSDIFF40" + b"".join(bsdiff4.core.encode_int64(n) for n in sizes) + control + diff + extra
    )


def one_control_entry(diff_len: int, extra_len: int) -> bytes:
    """A bz2 control block of one entry: add ``diff_len`` bytes, copy ``extra_len`` bytes."""
    entry = b"".join(bsdiff4.core.encode_int64(n) for n in (diff_len, extra_len, 0))
    return bz2.compress(entry)
