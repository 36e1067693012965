"""Deltas a hostile gateway could sign: containers whose header says whatever it likes, and
payloads that inflate far beyond what they declare."""

from __future__ import annotations

import bz2
import zlib

import bsdiff4.core

from protocol.delta import FORMAT_VERSION, HASH_PREFIX, MAGIC, Algorithm

MiB = 1 << 20


def container(
    algorithm: Algorithm, source_sha256: bytes, target_sha256: bytes, length: int, payload: bytes
) -> bytes:
    """A container laid out as docs/architecture.md says (format 2), from full sha256s."""
    return b"".join(
        (
            MAGIC,
            bytes((FORMAT_VERSION, algorithm)),
            source_sha256[:HASH_PREFIX],
            target_sha256[:HASH_PREFIX],
            varint(length),
            payload,
        )
    )


def varint(value: int) -> bytes:
    """LEB128, as the container encodes the target length."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes((value,))


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
