"""The delta container: how a model update travels when the device already holds an older model.

Layout (format 2)::

    magic "EFDL" | format u8 (2) | algorithm u8 | source sha256[:8] | target sha256[:8]
    | target length (LEB128 varint) | payload (the rest)

Algorithms: the full model (zlib), a bsdiff4 patch, and ``TENSOR_LZMA`` for equal-length
models: per-tensor differences guided by the source model's tflite layout (``tflite_layout``),
float32 and int32 words as zigzag integer differences split into byte planes (a fine-tune
changes low mantissa bytes, rarely sign and exponent), int8 bytes as differences mod 256, a
requantized tensor optionally against the prediction its old and new scales make, all in one
raw LZMA2 stream. ``make_delta`` ships whichever container is smallest.

Why 8-byte hash prefixes and no container digest are enough. Whoever signs deltas (the
gateway's online key) is trusted less than whoever signs models, so a device hands
``apply_delta`` what it already trusts (``Expected``: the sha256 of the model it holds, the
offline-signed target's sha256 and length) and:

- the delta's own bytes were checked against the deltas role's signed hash and length before
  they got here: a digest inside the container would repeat that check;
- before any byte is decoded the header must name that length and the prefixes of both hashes,
  so a delta made for another source model or to another target is refused first, in one line.
  The prefixes guard against mistakes, not attacks: a forger of the header gains nothing, since
- every decoder stops at the signed length (a small payload that would inflate to gigabytes is
  refused having produced at most that many bytes), the rebuilt model is checked against the
  full signed sha256 and length before it is returned, and the device checks it again against
  the offline-signed target before installing it. A corrupt container fails one of these checks.

Without ``Expected`` (tools checking deltas they made) the header's 64-bit prefix of the target
hash is what the result is checked against.

Format 1 (full hashes, 64-bit lengths, a trailing digest, an XOR codec) is refused with one
line: a device applies only deltas its gateway makes, the gateway makes format 2 and rebuilds a
delta it cached in format 1 (``gateway/serving/deltas.py``), and a refused delta costs a full
download, never the update.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import bsdiff4
import bsdiff4.core
import numpy as np

from protocol import tflite_layout
from protocol.tflite_layout import INT8, Region

MAGIC = b"EFDL"
FORMAT_VERSION = 2
HASH_PREFIX = 8  # bytes of each sha256 the header names (see the module docstring)
_FIXED = len(MAGIC) + 2 + 2 * HASH_PREFIX  # then the varint length
MAX_TARGET_LENGTH = 1 << 31  # a model larger than 2 GiB is not an edge model
DELTA_SUFFIX = ".efdl"


def delta_target_path(name: str, from_version: int, to_version: int) -> str:
    """Where a repository signs the delta between two versions of a model (inside the paths
    of the delegated deltas role, ``*/deltas/*``)."""
    return f"{name}/deltas/{from_version}-{to_version}{DELTA_SUFFIX}"


class Algorithm(IntEnum):
    FULL_ZLIB = 0  # the whole target, zlib-compressed: no source needed
    BSDIFF4 = 1
    # 2 was format 1's XOR of byte planes
    TENSOR_LZMA = 3  # equal-length models: per-tensor differences, byte planes, raw LZMA2


# The container is parsed in place: slices of it are memoryviews, not copies.
Bytes = bytes | bytearray | memoryview


class DeltaError(ValueError):
    """A delta that must not be applied: corrupt, for another source, or not giving its target."""


@dataclass(frozen=True)
class DeltaHeader:
    algorithm: Algorithm
    source_sha256: bytes  # the first HASH_PREFIX bytes
    target_sha256: bytes  # the first HASH_PREFIX bytes
    target_length: int
    payload_offset: int
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
    if header.target_sha256 != expected.target_sha256[:HASH_PREFIX]:
        raise DeltaError("delta declares another target than the signed model (target sha256)")
    if (
        header.algorithm != Algorithm.FULL_ZLIB
        and header.source_sha256 != expected.source_sha256[:HASH_PREFIX]
    ):
        raise DeltaError("delta was made for another source model (source sha256 mismatch)")


def _sha256(data: Bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _read_varint(data: Bytes, at: int) -> tuple[int, int]:
    """A minimal LEB128 value of at most 5 bytes (2^35 > MAX_TARGET_LENGTH), and where it ends."""
    value = 0
    for i in range(5):
        if at + i >= len(data):
            break
        byte = data[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and not byte:
                raise DeltaError("delta target length is not minimally encoded")
            return value, at + i + 1
    raise DeltaError("delta target length is truncated or longer than 5 bytes")


def _pack(algorithm: Algorithm, source: bytes, target: bytes, payload: bytes) -> bytes:
    source_hash = _sha256(source) if algorithm != Algorithm.FULL_ZLIB else bytes(32)
    return b"".join(
        (
            MAGIC,
            bytes((FORMAT_VERSION, algorithm)),
            source_hash[:HASH_PREFIX],
            _sha256(target)[:HASH_PREFIX],
            _varint(len(target)),
            payload,
        )
    )


def encode_payload(algorithm: Algorithm, old: bytes, new: bytes) -> bytes | None:
    """The payload of one algorithm, or None where it does not apply."""
    if algorithm == Algorithm.FULL_ZLIB:
        return zlib.compress(new, 9)
    if algorithm == Algorithm.BSDIFF4:
        patch: bytes = bsdiff4.diff(old, new)
        return patch
    if len(old) != len(new) or not new:
        return None
    return _tensor_encode(old, new)


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


def read_header(delta: Bytes) -> DeltaHeader:
    """Parse a container's header; raises ``DeltaError`` for anything malformed."""
    if len(delta) < _FIXED + 1:
        raise DeltaError(f"delta of {len(delta)} bytes is shorter than its header")
    if bytes(delta[:4]) != MAGIC:
        raise DeltaError("not an edgefleet delta (bad magic)")
    version, algorithm = delta[4], delta[5]
    if version != FORMAT_VERSION:
        raise DeltaError(
            f"delta format {version} is not accepted (format {FORMAT_VERSION} only): "
            "ask the gateway to make it again"
        )
    try:
        algo = Algorithm(algorithm)
    except ValueError:
        raise DeltaError(f"unknown delta algorithm {algorithm}") from None
    source = bytes(delta[6 : 6 + HASH_PREFIX])
    target = bytes(delta[6 + HASH_PREFIX : _FIXED])
    if algo == Algorithm.FULL_ZLIB and any(source):
        raise DeltaError("a full-model delta names a source model")
    target_len, payload_at = _read_varint(delta, _FIXED)
    if target_len > MAX_TARGET_LENGTH:
        raise DeltaError(f"delta target length {target_len} is too large")
    return DeltaHeader(algo, source, target, target_len, payload_at, len(delta) - payload_at)


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


# -- TENSOR_LZMA --------------------------------------------------------------------------------
#
# payload: one flag bit per quantized region (predict it from its scales or not)
# | one flag bit per int8 region (packed or not) | a raw LZMA2 stream. Its bytes are, at each
# byte of the model, the difference new - old mod 256; over a float32/int32 region, the zigzag
# of the word difference mod 2^32 with its four bytes as planes (most significant first) within
# the region; over an int8 region, the zigzag of the byte difference, and when every one of
# them is below 16 (a full fine-tune moves most int8 weights by -1, 0 or +1), two per byte, high
# nibble first, so the stream is shorter than the model by half of each packed region; over a
# predicted region, the difference from the prediction instead of from old.

_PROPS = ((0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 2))  # (lc, lp, pb) the encoder tries
_NICE_LEN = 273  # LZMA's longest match search: runs of unchanged bytes are long
_CHUNK = 1 << 10  # elements per step of the predictor and the word transforms: bounded temporaries
# Bytes per step of feeding the decoder, taking its output and spreading that to the model's
# offsets: each step's temporaries sit beside liblzma's ~50 KB, which dominates a small model.
_PIECE = 1 << 10
_STEP = 1 << 10


def _lzma_filters(target_length: int) -> list[dict[str, int]]:
    """LZMA2 with a dictionary of a quarter of the target, at most 1 MiB: the decoder
    allocates it (on Python's heap, which ``tracemalloc`` sees), and a fine-tune's differences
    repeat at short range. Literal and position bits travel in the stream's chunk headers."""
    dict_size = min(max(1 << 12, target_length // 4), 1 << 20)
    return [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]


def _quantized(layout: list[Region]) -> list[Region]:
    return [region for region in layout if region.quantized is not None]


def _chunks(count: int) -> Iterator[slice]:
    for at in range(0, count, _CHUNK):
        yield slice(at, min(at + _CHUNK, count))


def _prediction(region: Region, old: np.ndarray, new_scales: np.ndarray, s: slice) -> np.ndarray:
    """What a requantized tensor's elements ``s`` become if only their scales changed: the old
    integer times old scale / new scale, rounded and clipped to the type."""
    q = region.quantized
    assert q is not None
    kind = np.int8 if region.kind == INT8 else np.int32
    values = old[region.start : region.start + region.length].view(kind)[s]
    old_scales = old[q.scales : q.scales + 4 * q.count].view(np.float32)
    with np.errstate(all="ignore"):
        ratio = old_scales.astype(np.float64) / new_scales.astype(np.float64)
    ratio[~np.isfinite(ratio)] = 1.0
    channel = (np.arange(s.start, s.stop) // q.inner) % q.count
    info = np.iinfo(kind)
    predicted: np.ndarray = np.clip(np.rint(values * ratio[channel]), info.min, info.max)
    return predicted.astype(kind)


def _base(region: Region, old: np.ndarray, new: np.ndarray, predict: bool, s: slice) -> np.ndarray:
    """What the region's elements ``s`` are coded against (new holds the final scales)."""
    if predict:
        q = region.quantized
        assert q is not None
        return _prediction(region, old, new[q.scales : q.scales + 4 * q.count].view(np.float32), s)
    kind = np.uint8 if region.kind == INT8 else np.uint32
    values: np.ndarray = old[region.start : region.start + region.length].view(kind)[s]
    return values


def _zigzag(d: np.ndarray) -> np.ndarray:
    """Small differences of either sign to small unsigned values (-1 -> 1, 1 -> 2)."""
    signed = np.int8 if d.dtype == np.uint8 else np.int32
    sign: np.ndarray = np.right_shift(d.view(signed), 8 * d.itemsize - 1)
    zigzag: np.ndarray = np.left_shift(d, d.dtype.type(1)) ^ sign.view(d.dtype)
    return zigzag


def _unzigzag(z: np.ndarray) -> np.ndarray:
    one = z.dtype.type(1)
    plain: np.ndarray = (z >> one) ^ (z.dtype.type(0) - (z & one))
    return plain


def _entropy(data: np.ndarray) -> float:
    counts = np.bincount(data.view(np.uint8), minlength=256)
    p = counts[counts > 0] / data.nbytes
    return float(-(p * np.log2(p)).sum()) * data.nbytes


def _region_bytes(region: Region, old: np.ndarray, new: np.ndarray, predict: bool) -> np.ndarray:
    """The coded bytes of one region."""
    span = slice(region.start, region.start + region.length)
    if region.kind == INT8:
        count = region.length
        out = np.empty(count, np.uint8)
        for s in _chunks(count):
            out[s] = _zigzag(new[span][s] - _base(region, old, new, predict, s).view(np.uint8))
        return out
    count = region.length // 4
    words = np.empty(count, np.uint32)
    for s in _chunks(count):
        words[s] = _zigzag(
            new[span].view(np.uint32)[s] - _base(region, old, new, predict, s).view(np.uint32)
        )
    return words.view(np.uint8).reshape(count, 4)[:, ::-1].T.ravel()


def _tensor_encode(old: bytes, new: bytes) -> bytes:
    a, b = np.frombuffer(old, np.uint8), np.frombuffer(new, np.uint8)
    layout = tflite_layout.regions(old)
    coded = b - a
    predict_bit = {region.start: bit for bit, region in enumerate(_quantized(layout))}
    pack_bit = {region.start: bit for bit, region in enumerate(_int8(layout))}
    flags = pack_flags = 0
    pieces, at = [], 0
    for region in layout:
        values = _region_bytes(region, a, b, False)
        if region.start in predict_bit:
            predicted = _region_bytes(region, a, b, True)
            if _entropy(predicted) < _entropy(values):
                values, flags = predicted, flags | 1 << predict_bit[region.start]
        pieces.append(coded[at : region.start].tobytes())
        if region.start in pack_bit and region.length and int(values.max()) < 16:
            pack_flags |= 1 << pack_bit[region.start]
            pieces.append(_nibbles(values))
        else:
            pieces.append(values.tobytes())
        at = region.start + region.length
    pieces.append(coded[at:].tobytes())
    data = b"".join(pieces)
    streams = []
    for lc, lp, pb in _PROPS:
        filters = _lzma_filters(len(new))
        filters[0].update(preset=9 | lzma.PRESET_EXTREME, lc=lc, lp=lp, pb=pb, nice_len=_NICE_LEN)
        streams.append(lzma.compress(data, lzma.FORMAT_RAW, filters=filters))
    return (
        flags.to_bytes(_flag_bytes(_quantized(layout)), "little")
        + pack_flags.to_bytes(_flag_bytes(_int8(layout)), "little")
        + min(streams, key=len)
    )


def _int8(layout: list[Region]) -> list[Region]:
    return [region for region in layout if region.kind == INT8]


def _flag_bytes(regions: list[Region]) -> int:
    return (len(regions) + 7) // 8


def _nibbles(values: np.ndarray) -> bytes:
    """Values below 16, two per byte, high nibble first (a lone last one in a high nibble)."""
    even = np.zeros(len(values) + len(values) % 2, np.uint8)
    even[: len(values)] = values
    packed: np.ndarray = (even[0::2] << 4) | even[1::2]
    return packed.tobytes()


def _unpack_in_place(out: np.ndarray, layout: list[Region], packed: set[int], stream: int) -> None:
    """Spread the inflated stream (its first ``stream`` bytes of ``out``) to the model's
    offsets, last segment first: every segment's destination starts at or after its source,
    so what is still to be moved is never overwritten. Temporaries stay one step's size."""
    segments, at = [], 0  # (destination start, length, packed)
    for region in layout:
        segments += [
            (at, region.start - at, False),
            (region.start, region.length, region.start in packed),
        ]
        at = region.start + region.length
    segments.append((at, len(out) - at, False))
    source = stream
    for start, length, is_packed in reversed(segments):
        size = (length + 1) // 2 if is_packed else length
        source -= size
        for end in range(size, 0, -_STEP):
            begin = max(0, end - _STEP)
            chunk = out[source + begin : source + end].copy()
            if is_packed:
                wide = np.empty(2 * len(chunk), np.uint8)
                wide[0::2], wide[1::2] = chunk >> 4, chunk & 15
                stop = min(2 * end, length) - 2 * begin
                out[start + 2 * begin : start + 2 * begin + stop] = wide[:stop]
            else:
                out[start + begin : start + end] = chunk
    if source != 0:
        raise DeltaError("delta payload has the wrong length")


def _flag_map(layout: list[Region], flags: int) -> dict[int, bool]:
    """Which quantized regions (by start) are coded against their prediction."""
    return {region.start: bool(flags >> bit & 1) for bit, region in enumerate(_quantized(layout))}


def _inflate_into(
    payload: Bytes, filters: list[dict[str, int]], out: bytearray, length: int
) -> None:
    """The raw LZMA2 stream, inflated a chunk at a time into the first ``length`` bytes of
    ``out``: a stream making more or less, or with bytes after its end, is refused."""
    decoder = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
    at, fed = 0, 0
    try:
        while not decoder.eof:
            # Input in small pieces too: what the decoder has not used yet, it copies.
            piece = payload[fed : fed + _PIECE] if decoder.needs_input else b""
            if decoder.needs_input and not piece:
                raise DeltaError("delta payload is truncated")
            fed += len(piece)
            chunk = decoder.decompress(piece, _PIECE)
            if len(chunk) > length - at:
                raise DeltaError(f"delta payload decompresses to more than {length} bytes")
            out[at : at + len(chunk)] = chunk
            at += len(chunk)
    except lzma.LZMAError as exc:
        raise DeltaError(f"delta payload does not decompress: {exc}") from exc
    if decoder.unused_data or fed < len(payload):
        raise DeltaError("delta payload has bytes after its end")
    if at != length:
        raise DeltaError("delta payload has the wrong length")


def _tensor_decode(header: DeltaHeader, old: Bytes, payload: Bytes) -> bytearray:
    if len(old) != header.target_length:
        raise DeltaError("a tensor delta needs a source as long as its target")
    layout = tflite_layout.regions(old)
    n_predict, int8 = _flag_bytes(_quantized(layout)), _int8(layout)
    n_flags = n_predict + _flag_bytes(int8)
    if len(payload) < n_flags:
        raise DeltaError("delta payload is shorter than its flags")
    predicts = _flag_map(layout, int.from_bytes(payload[:n_predict], "little"))
    pack_flags = int.from_bytes(payload[n_predict:n_flags], "little")
    packed = {region.start for bit, region in enumerate(int8) if pack_flags >> bit & 1}
    if pack_flags >> len(int8):
        raise DeltaError("delta payload flags regions the source model does not have")
    stream = len(old) - sum(r.length // 2 for r in int8 if r.start in packed)
    rebuilt = bytearray(len(old))
    _inflate_into(payload[n_flags:], _lzma_filters(len(old)), rebuilt, stream)
    out, a = np.frombuffer(rebuilt, np.uint8), np.frombuffer(old, np.uint8)
    _unpack_in_place(out, layout, packed, stream)
    # Everything but the predicted regions first: their prediction reads the new scales.
    at = 0
    for region in layout:
        _add(out, a, slice(at, region.start))
        at = region.start + region.length
        if region.kind != INT8:
            span = out[region.start : at]
            span[:] = span.reshape(4, -1)[::-1].T.ravel()  # one temporary: the region's size
        if not predicts.get(region.start, False):
            _undo(region, out, a, False)
    _add(out, a, slice(at, len(out)))
    for region in layout:
        if predicts.get(region.start, False):
            _undo(region, out, a, True)
    return rebuilt


def _add(out: np.ndarray, old: np.ndarray, span: slice) -> None:
    np.add(out[span], old[span], out=out[span])


def _undo(region: Region, out: np.ndarray, old: np.ndarray, predict: bool) -> None:
    """Turn one region's coded bytes in ``out`` into the model's."""
    span = out[region.start : region.start + region.length]
    if region.kind == INT8:
        for s in _chunks(region.length):
            span[s] = _unzigzag(span[s]) + _base(region, old, out, predict, s).view(np.uint8)
        return
    words = span.view(np.uint32)
    for s in _chunks(len(words)):
        words[s] = _unzigzag(words[s]) + _base(region, old, out, predict, s).view(np.uint32)


def apply_delta(old: bytes, delta: bytes, expected: Expected | None = None) -> bytes | bytearray:
    """Rebuild the target from ``old``. A device passes ``expected`` (see ``Expected``); without
    it the header's own target prefix is believed, for tools that check deltas they made."""
    header = read_header(delta)
    if expected is None:
        expected = Expected(_sha256(old), header.target_sha256, header.target_length)
    check_header(header, expected)
    payload = memoryview(delta)[header.payload_offset :]
    new: Bytes
    if header.algorithm == Algorithm.FULL_ZLIB:
        new = _bounded(zlib.decompressobj(), payload, header.target_length, "delta payload")
    else:
        if _sha256(old)[:HASH_PREFIX] != header.source_sha256:
            raise DeltaError("delta was made for another source model (source sha256 mismatch)")
        if header.algorithm == Algorithm.BSDIFF4:
            new = _bsdiff4_patch(header, old, payload)
        else:
            new = _tensor_decode(header, old, payload)
    digest = _sha256(new)
    if len(new) != header.target_length or digest[: len(expected.target_sha256)] != (
        expected.target_sha256
    ):
        raise DeltaError("delta result does not match its target (length or sha256)")
    return new
