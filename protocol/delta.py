"""The delta container: how a model update travels when the device already holds an older model.

Layout (all integers big-endian)::

    magic "EFDL" | format u8 | algorithm u8 | source sha256 (32) | target sha256 (32)
    | target length u64 | payload length u64 | payload | sha256 of everything before (32)

Algorithms: the full model (zlib), a bsdiff4 patch, and a model-aware XOR of equal-length
models split into byte planes and LZMA-compressed (a fine-tune rewrites weights in place; their
sign and exponent bytes rarely change). ``make_delta`` ships whichever is smallest.

The trailing digest makes any corruption of the container itself a refusal before the payload
reaches a decoder; the source hash refuses a delta applied to the wrong model; the target hash
and length are checked on the result before it is returned. A delta is transport only: the
device still checks the result against the offline-signed target.

Whoever signs deltas (the gateway's online key) is trusted less than whoever signs models, so
a device hands ``apply_delta`` what it already trusts (``Expected``: the model it holds and the
offline-signed target's length and hash). The header must name exactly these before any byte
is decoded, and every decoder stops at the signed length: a small payload that would inflate
to gigabytes is refused having produced at most that many bytes.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import bsdiff4
import bsdiff4.core
import numpy as np

MAGIC = b"EFDL"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBB32s32sQQ")
_DIGEST_LEN = 32
MAX_TARGET_LENGTH = 1 << 31  # a model larger than 2 GiB is not an edge model
DELTA_SUFFIX = ".efdl"


def delta_target_path(name: str, from_version: int, to_version: int) -> str:
    """Where a repository signs the delta between two versions of a model (inside the paths
    of the delegated deltas role, ``*/deltas/*``)."""
    return f"{name}/deltas/{from_version}-{to_version}{DELTA_SUFFIX}"


class Algorithm(IntEnum):
    FULL_ZLIB = 0  # the whole target, zlib-compressed: no source needed
    BSDIFF4 = 1
    XOR_PLANES_LZMA = 2  # equal-length models: XOR, split into 4 byte planes, then LZMA


# The container is parsed in place: slices of it are memoryviews, not copies.
Bytes = bytes | memoryview

PLANES = 4  # float32 weights: a fine-tune changes mantissas, rarely sign and exponent bytes


class DeltaError(ValueError):
    """A delta that must not be applied: corrupt, for another source, or not giving its target."""


@dataclass(frozen=True)
class DeltaHeader:
    algorithm: Algorithm
    source_sha256: bytes
    target_sha256: bytes
    target_length: int
    payload_length: int


@dataclass(frozen=True)
class Expected:
    """What a delta must turn into, from facts the device trusts more than the delta: the
    sha256 of the model it holds, and the offline-signed target's sha256 and length."""

    source_sha256: bytes
    target_sha256: bytes
    target_length: int


def check_header(header: DeltaHeader, expected: Expected) -> None:
    """Refuse a delta whose header names another source or target than ``expected``, before
    anything is decoded (the declared length is what bounds every decoder)."""
    if header.target_length != expected.target_length:
        raise DeltaError(
            f"delta declares a target of {header.target_length} bytes, "
            f"the signed model has {expected.target_length}"
        )
    if header.target_sha256 != expected.target_sha256:
        raise DeltaError("delta declares another target than the signed model (target sha256)")
    if header.algorithm != Algorithm.FULL_ZLIB and header.source_sha256 != expected.source_sha256:
        raise DeltaError("delta was made for another source model (source sha256 mismatch)")


def _sha256(data: Bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _pack(algorithm: Algorithm, source: bytes, target: bytes, payload: bytes) -> bytes:
    source_hash = _sha256(source) if algorithm != Algorithm.FULL_ZLIB else bytes(32)
    body = (
        _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            algorithm,
            source_hash,
            _sha256(target),
            len(target),
            len(payload),
        )
        + payload
    )
    return body + _sha256(body)


def _xor(a: bytes, b: bytes) -> bytes:
    return np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes()


def _to_planes(data: bytes) -> bytes:
    return b"".join(data[i::PLANES] for i in range(PLANES))


def encode_payload(algorithm: Algorithm, old: bytes, new: bytes) -> bytes | None:
    """The payload of one algorithm, or None where it does not apply."""
    if algorithm == Algorithm.FULL_ZLIB:
        return zlib.compress(new, 9)
    if algorithm == Algorithm.BSDIFF4:
        patch: bytes = bsdiff4.diff(old, new)
        return patch
    if len(old) != len(new):
        return None
    # A dictionary no larger than the data keeps small deltas fast to make.
    dict_size = max(1 << 16, 1 << (len(new) - 1).bit_length())
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": min(dict_size, 1 << 26)}]
    return lzma.compress(_to_planes(_xor(old, new)), format=lzma.FORMAT_XZ, filters=filters)


def make_delta(old: bytes, new: bytes, algorithms: Iterable[Algorithm] = tuple(Algorithm)) -> bytes:
    """The smallest container that turns ``old`` into ``new`` among ``algorithms``; the full
    model compressed wins whenever no patch is smaller than it."""
    if len(new) > MAX_TARGET_LENGTH:
        raise DeltaError(f"target of {len(new)} bytes is larger than {MAX_TARGET_LENGTH}")
    candidates = [
        (len(payload), algorithm, payload)
        for algorithm in {Algorithm.FULL_ZLIB, *algorithms}
        if (payload := encode_payload(algorithm, old, new)) is not None
    ]
    _, algorithm, payload = min(candidates, key=lambda c: (c[0], c[1] != Algorithm.FULL_ZLIB))
    return _pack(algorithm, old, new, payload)


def read_header(delta: bytes) -> DeltaHeader:
    """Parse and integrity-check a container; raises ``DeltaError`` for anything malformed."""
    if len(delta) < _HEADER.size + _DIGEST_LEN:
        raise DeltaError(f"delta of {len(delta)} bytes is shorter than its header")
    body, digest = memoryview(delta)[:-_DIGEST_LEN], delta[-_DIGEST_LEN:]  # no copy
    if _sha256(body) != digest:
        raise DeltaError("delta is corrupt (container digest mismatch)")
    magic, version, algorithm, source, target, target_len, payload_len = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise DeltaError("not an edgefleet delta (bad magic)")
    if version != FORMAT_VERSION:
        raise DeltaError(f"unsupported delta format version {version}")
    try:
        algo = Algorithm(algorithm)
    except ValueError:
        raise DeltaError(f"unknown delta algorithm {algorithm}") from None
    if payload_len != len(body) - _HEADER.size:
        raise DeltaError("delta payload length does not match its header")
    if target_len > MAX_TARGET_LENGTH:
        raise DeltaError(f"delta target length {target_len} is too large")
    return DeltaHeader(algo, source, target, target_len, payload_len)


class _Decompressor(Protocol):
    """What zlib's, bz2's and lzma's incremental decompressors have in common."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: Bytes, max_length: int, /) -> bytes: ...


def _bounded(decoder: _Decompressor, data: Bytes, limit: int, what: str) -> bytes:
    """Everything ``decoder`` makes of ``data``, refused as soon as it exceeds ``limit`` bytes
    (so a bomb costs at most ``limit`` bytes), or when the stream does not end exactly there."""
    try:
        out = decoder.decompress(data, limit + 1)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise DeltaError(f"{what} does not decompress: {exc}") from exc
    if len(out) > limit:
        raise DeltaError(f"{what} decompresses to more than {limit} bytes")
    if not decoder.eof:
        raise DeltaError(f"{what} is truncated")
    if decoder.unused_data:
        raise DeltaError(f"{what} has bytes after its end")
    return out


BSDIFF_MAGIC = b"BSDIFF40"
_BSDIFF_HEADER = 32  # magic, then control, diff (compressed) and new lengths as int64


def _bsdiff4_patch(header: DeltaHeader, old: bytes, payload: Bytes) -> bytes:
    """``bsdiff4.patch`` with bounds: its format declares the new size and carries three bz2
    streams that ``bsdiff4.patch`` inflates whole. Here the declared size must be the signed
    one and each stream is inflated with a bound before bsdiff4's core rebuilds the model."""
    if len(payload) < _BSDIFF_HEADER or payload[:8] != BSDIFF_MAGIC:
        raise DeltaError("bsdiff4 payload has no bsdiff4 header")
    control_len, diff_len, new_len = (
        bsdiff4.core.decode_int64(bytes(payload[at : at + 8])) for at in (8, 16, 24)
    )
    if new_len != header.target_length:
        raise DeltaError(
            f"bsdiff4 payload declares {new_len} bytes, the target has {header.target_length}"
        )
    if not (
        control_len >= 0
        and diff_len >= 0
        and _BSDIFF_HEADER + control_len + diff_len <= len(payload)
    ):
        raise DeltaError("bsdiff4 payload lengths do not fit the payload")
    diff_at = _BSDIFF_HEADER + control_len
    extra_at = diff_at + diff_len
    # Control entries are 24 bytes each: a control block longer than the model is no patch.
    control = _bounded(
        bz2.BZ2Decompressor(), payload[_BSDIFF_HEADER:diff_at], new_len + 24, "bsdiff4 control"
    )
    diff = _bounded(bz2.BZ2Decompressor(), payload[diff_at:extra_at], new_len, "bsdiff4 diff")
    extra = _bounded(bz2.BZ2Decompressor(), payload[extra_at:], new_len, "bsdiff4 extra")
    if len(control) % 24:
        raise DeltaError("bsdiff4 control block is not whole entries")
    try:
        new: bytes = bsdiff4.core.patch(old, new_len, control, diff, extra)
        return new
    except Exception as exc:  # the core raises bare ValueError/RuntimeError on bad patches
        raise DeltaError(f"delta payload does not apply: {exc}") from exc


def _patch(header: DeltaHeader, old: bytes, payload: Bytes) -> bytes:
    if header.algorithm == Algorithm.BSDIFF4:
        return _bsdiff4_patch(header, old, payload)
    if len(old) != header.target_length:
        raise DeltaError("an XOR delta needs a source as long as its target")
    # liblzma allocates the dictionary the stream asks for: no more than the target needs.
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=_lzma_memlimit(header.target_length))
    planes = _bounded(decoder, payload, header.target_length, "delta payload")
    if len(planes) != header.target_length:
        raise DeltaError("delta payload has the wrong length")
    # Interleave the planes and XOR in one array: the model's size, not five times it.
    out = np.empty(header.target_length, np.uint8)
    start = 0
    for i in range(PLANES):
        size = len(range(i, header.target_length, PLANES))
        out[i::PLANES] = np.frombuffer(planes, np.uint8, size, start)
        start += size
    del planes
    np.bitwise_xor(out, np.frombuffer(old, np.uint8), out=out)
    return out.tobytes()


def _lzma_memlimit(target_length: int) -> int:
    """What an XZ decoder may use: a dictionary of the next power of two above the target (what
    ``encode_payload`` asks for), and liblzma's own few hundred KiB."""
    return max(1 << 16, 1 << max(target_length - 1, 1).bit_length()) + (1 << 20)


def apply_delta(old: bytes, delta: bytes, expected: Expected | None = None) -> bytes:
    """Rebuild the target from ``old``. A device passes ``expected`` (see ``Expected``); without
    it the header's own target is believed, for tools that check deltas they made themselves."""
    header = read_header(delta)
    if expected is None:
        expected = Expected(_sha256(old), header.target_sha256, header.target_length)
    check_header(header, expected)
    payload = memoryview(delta)[_HEADER.size : _HEADER.size + header.payload_length]
    if header.algorithm == Algorithm.FULL_ZLIB:
        new = _bounded(zlib.decompressobj(), payload, header.target_length, "delta payload")
    else:
        if _sha256(old) != header.source_sha256:
            raise DeltaError("delta was made for another source model (source sha256 mismatch)")
        new = _patch(header, old, payload)
    if len(new) != header.target_length or _sha256(new) != header.target_sha256:
        raise DeltaError("delta result does not match its target (length or sha256)")
    return new
