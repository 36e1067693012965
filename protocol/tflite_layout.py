"""Where a .tflite model keeps its tensors, read from the model a device already holds.

The delta codec codes each tensor by its type (float32 and int32 words, int8 bytes) and
predicts a requantized tensor from its scales; both ends derive that plan from the *source*
model, so the plan never travels and a delta cannot lie about it. The source is a model the
device installed after checking it against an offline-signature, but this reader is strict all
the same: it reads the few flatbuffer fields it needs with every offset bounds-checked, keeps
only regions that lie inside the file and do not overlap, and answers "no layout" (the codec
then codes plain bytes) for anything that is not a model it understands.

Fields read (tflite ``schema.fbs``): Model.subgraphs (2), Model.buffers (4); SubGraph.tensors
(0); Tensor.shape (0), type (1), buffer (2), quantization (4); Buffer.data (0), offset (1),
size (2); QuantizationParameters.scale (2), quantized_dimension (6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FLOAT32, INT32, INT8 = 0, 2, 9  # tflite TensorType values coded specially
MAX_TENSORS = 1 << 16  # more tensors than any edge model has: the layout is not believed


class _Malformed(Exception):
    """The bytes are not a flatbuffer this reader understands."""


@dataclass(frozen=True)
class Quantized:
    """An integer tensor's per-channel scales: ``count`` float32 values at byte ``scales`` of
    the model; element ``i`` belongs to channel ``(i // inner) % count``."""

    scales: int
    count: int
    inner: int


@dataclass(frozen=True)
class Region:
    start: int
    length: int
    kind: int  # FLOAT32 or INT32 (coded as words), INT8 (bytes)
    quantized: Quantized | None = None


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview):
        self.data = memoryview(data)

    def u(self, fmt: str, at: int) -> int:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.data):
            raise _Malformed
        value: int = struct.unpack_from(fmt, self.data, at)[0]
        return value

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of a table's field, or None where it is absent."""
        vtable = table - self.u("<i", table)
        vsize = self.u("<H", vtable)
        if 4 + 2 * index + 2 > vsize:
            return None
        offset = self.u("<H", vtable + 4 + 2 * index)
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        at = self.field(table, index)
        return default if at is None else self.u(fmt, at)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(position of the first element, element count) of a vector field; (0, 0) if absent."""
        at = self.field(table, index)
        if at is None:
            return 0, 0
        start = at + self.u("<I", at)
        count = self.u("<I", start)
        if count > len(self.data):
            raise _Malformed
        return start + 4, count

    def table(self, element: int) -> int:
        return element + self.u("<I", element)


def regions(model: bytes | bytearray | memoryview) -> list[Region]:
    """The tensors of ``model`` that the codec codes by type, in file order, or ``[]``."""
    try:
        return _regions(_Reader(model))
    except (_Malformed, struct.error):
        return []


def _regions(r: _Reader) -> list[Region]:
    if len(r.data) < 8 or bytes(r.data[4:8]) != b"TFL3":
        return []
    root = r.table(0)
    buffers, n_buffers = r.vector(root, 4)
    subgraphs, n_subgraphs = r.vector(root, 2)
    found: list[Region] = []
    for s in range(n_subgraphs):
        graph = r.table(subgraphs + 4 * s)
        tensors, n_tensors = r.vector(graph, 0)
        if n_tensors > MAX_TENSORS:
            raise _Malformed
        for t in range(n_tensors):
            tensor = r.table(tensors + 4 * t)
            region = _tensor_region(r, tensor, buffers, n_buffers)
            if region is not None:
                found.append(region)
            scales = _scales(r, tensor)
            if scales is not None:
                found.append(Region(scales[0], 4 * scales[1], FLOAT32))
    return _disjoint(found, len(r.data))


def _tensor_region(r: _Reader, tensor: int, buffers: int, n_buffers: int) -> Region | None:
    kind = r.scalar(tensor, 1, "<b")
    index = r.scalar(tensor, 2, "<I")
    if kind not in (FLOAT32, INT32, INT8) or not 0 < index < n_buffers:
        return None
    buffer = r.table(buffers + 4 * index)
    start, length = r.vector(buffer, 0)
    if not length:  # a model over 2 GiB keeps its data after the flatbuffer
        start, length = r.scalar(buffer, 1, "<Q"), r.scalar(buffer, 2, "<Q")
    if length <= 1:
        return None
    return Region(start, length, kind, _quantized(r, tensor, kind, length))


def _scales(r: _Reader, tensor: int) -> tuple[int, int] | None:
    at = r.field(tensor, 4)
    if at is None:
        return None
    start, count = r.vector(r.table(at), 2)
    return (start, count) if count else None


def _quantized(r: _Reader, tensor: int, kind: int, length: int) -> Quantized | None:
    """Scales of an int8/int32 tensor whose shape accounts for its bytes, else None."""
    scales = _scales(r, tensor) if kind in (INT8, INT32) else None
    if scales is None:
        return None
    shape_at, rank = r.vector(tensor, 0)
    if rank > 8:
        return None
    shape = [r.u("<i", shape_at + 4 * i) for i in range(rank)]
    elements = 1
    for dim in shape:
        elements *= dim
    if any(dim <= 0 for dim in shape) or elements * (4 if kind == INT32 else 1) != length:
        return None
    start, count = scales
    if count == 1:
        return Quantized(start, 1, elements)
    axis = r.scalar(r.table(r.field(tensor, 4) or 0), 6, "<i")
    if not 0 <= axis < rank or shape[axis] != count:
        return None
    inner = 1
    for dim in shape[axis + 1 :]:
        inner *= dim
    return Quantized(start, count, inner)


def _disjoint(found: list[Region], size: int) -> list[Region]:
    """Regions inside the file, aligned as their type needs, each byte in at most one."""
    kept: list[Region] = []
    end = 0
    for region in sorted(found, key=lambda g: (g.start, g.length)):
        word = region.kind != INT8
        if region.start < end or region.start + region.length > size:
            continue
        if word and (region.start % 4 or region.length % 4):
            continue
        q = region.quantized
        if q is not None and (q.scales % 4 or q.scales + 4 * q.count > size):
            region = Region(region.start, region.length, region.kind)
        kept.append(region)
        end = region.start + region.length
    return kept
