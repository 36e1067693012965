"""The delta container: how a model update travels when the device already holds an older model.

Layout (all integers big-endian)::

    magic "EFDL" | format u8 | algorithm u8 | source sha256 (32) | target sha256 (32)
    | target length u64 | payload length u64 | payload | sha256 of everything before (32)

The trailing digest makes any corruption of the container itself a refusal before the payload
reaches a decoder; the source hash refuses a delta applied to the wrong model; the target hash
and length are checked on the result before it is returned. A delta is transport only: the
device still checks the result against the offline-signed target.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import bsdiff4

MAGIC = b"EFDL"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBB32s32sQQ")
_DIGEST_LEN = 32
MAX_TARGET_LENGTH = 1 << 31  # a model larger than 2 GiB is not an edge model


class Algorithm(IntEnum):
    FULL_ZLIB = 0  # the whole target, zlib-compressed: no source needed
    BSDIFF4 = 1


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


def make_delta(old: bytes, new: bytes) -> bytes:
    """The smallest container that turns ``old`` into ``new``: a bsdiff4 patch, or the full
    model compressed when the patch is not smaller than that."""
    if len(new) > MAX_TARGET_LENGTH:
        raise DeltaError(f"target of {len(new)} bytes is larger than {MAX_TARGET_LENGTH}")
    full = zlib.compress(new, 9)
    patch = bsdiff4.diff(old, new)
    if len(patch) < len(full):
        return _pack(Algorithm.BSDIFF4, old, new, patch)
    return _pack(Algorithm.FULL_ZLIB, old, new, full)


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
        try:
            new = bsdiff4.patch(old, payload)
        except Exception as exc:  # bsdiff4 raises bare ValueError/RuntimeError on bad patches
            raise DeltaError(f"delta payload does not apply: {exc}") from exc
    if len(new) != header.target_length or _sha256(new) != header.target_sha256:
        raise DeltaError("delta result does not match its target (length or sha256)")
    return new
