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
"""

from __future__ import annotations

import hashlib
import lzma
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import bsdiff4

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


def _sha256(data: bytes) -> bytes:
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
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _to_planes(data: bytes) -> bytes:
    return b"".join(data[i::PLANES] for i in range(PLANES))


def _from_planes(data: bytes) -> bytes:
    out = bytearray(len(data))
    start = 0
    for i in range(PLANES):
        size = len(range(i, len(data), PLANES))
        out[i::PLANES] = data[start : start + size]
        start += size
    return bytes(out)


def encode_payload(algorithm: Algorithm, old: bytes, new: bytes) -> bytes | None:
    """The payload of one algorithm, or None where it does not apply."""
    if algorithm == Algorithm.FULL_ZLIB:
        return zlib.compress(new, 9)
    if algorithm == Algorithm.BSDIFF4:
        return bsdiff4.diff(old, new)
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
    body, digest = delta[:-_DIGEST_LEN], delta[-_DIGEST_LEN:]
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


def _patch(header: DeltaHeader, old: bytes, payload: bytes) -> bytes:
    if header.algorithm == Algorithm.BSDIFF4:
        try:
            return bsdiff4.patch(old, payload)
        except Exception as exc:  # bsdiff4 raises bare ValueError/RuntimeError on bad patches
            raise DeltaError(f"delta payload does not apply: {exc}") from exc
    if len(old) != header.target_length:
        raise DeltaError("an XOR delta needs a source as long as its target")
    try:
        planes = lzma.LZMADecompressor().decompress(payload, header.target_length + 1)
    except lzma.LZMAError as exc:
        raise DeltaError(f"delta payload does not decompress: {exc}") from exc
    if len(planes) != header.target_length:
        raise DeltaError("delta payload has the wrong length")
    return _xor(old, _from_planes(planes))


def apply_delta(old: bytes, delta: bytes) -> bytes:
    """Rebuild the target from ``old``; refuses a wrong source and checks the result."""
    header = read_header(delta)
    payload = delta[_HEADER.size : _HEADER.size + header.payload_length]
    if header.algorithm == Algorithm.FULL_ZLIB:
        try:
            decoder = zlib.decompressobj()
            new = decoder.decompress(payload, header.target_length + 1)
        except zlib.error as exc:
            raise DeltaError(f"delta payload does not decompress: {exc}") from exc
    else:
        if _sha256(old) != header.source_sha256:
            raise DeltaError("delta was made for another source model (source sha256 mismatch)")
        new = _patch(header, old, payload)
    if len(new) != header.target_length or _sha256(new) != header.target_sha256:
        raise DeltaError("delta result does not match its target (length or sha256)")
    return new
