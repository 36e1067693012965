"""The health-gate vectors a release signs, in the two encodings devices read.

* Format 1 (``<name>/<version>.gate.json``): every reference input and output as base64 arrays.
  Every agent reads it; for a keyword model it is 16 KB of inputs and 128 bytes of outputs.
* Format 2, compact (``<name>/<version>.gate2.json``): the outputs, and for inputs either the
  seed that generates them or, when the operator gave real inputs, the arrays. A device that
  reads it fetches a few hundred bytes instead of the inputs.

Seeded inputs come from SHAKE-256 of the seed and the tensor's index, turned into approximately
standard-normal values with integer and IEEE float64 arithmetic only (a sum of four uniforms,
centred and scaled: no library function whose last bit may differ between machines), then
quantized by the tensor's own signed spec. The signer and every device therefore feed the model
the same bytes, whatever numpy or platform each runs.

A compact file is read against the signed model metadata: the sample count and every shape and
dtype must be the signed ones before anything is generated or decoded.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from protocol.model_meta import (
    MAX_EVAL_VALUES,
    GateRef,
    GateVectors,
    MetadataError,
    ModelMeta,
    TensorSpec,
    decode_array,
    encode_array,
)

COMPACT_FORMAT = 2
_DOMAIN = b"edgefleet gate inputs v1"
_UNIFORMS = 4  # per value: their sum is close to normal, with variance 4/12
_SCALE = math.sqrt(12 / _UNIFORMS)


def seeded_inputs(specs: tuple[TensorSpec, ...], seed: int, count: int) -> tuple[np.ndarray, ...]:
    """``count`` reference inputs per tensor, as the tensor takes them, from ``seed`` alone."""
    batches = []
    for index, spec in enumerate(specs):
        values = count * math.prod(spec.shape)
        stream = hashlib.shake_256(
            _DOMAIN + seed.to_bytes(4, "big") + index.to_bytes(2, "big")
        ).digest(4 * _UNIFORMS * values)
        words = np.frombuffer(stream, dtype="<u4").reshape(values, _UNIFORMS)
        uniforms = (words >> 8).astype(np.float64) / float(1 << 24)
        normal = (uniforms.sum(axis=1) - _UNIFORMS / 2) * _SCALE
        batches.append(spec.quantize(normal.astype(np.float32).reshape(count, *spec.shape)))
    return tuple(batches)


@dataclass(frozen=True)
class SignedGate:
    """Gate vectors as a release signs them; ``seed`` made the inputs (None: the operator's)."""

    vectors: GateVectors
    seed: int | None

    def full_bytes(self) -> bytes:
        return json.dumps(self.vectors.to_json(), separators=(",", ":")).encode()

    def compact_bytes(self) -> bytes:
        inputs: Any = (
            {"seed": self.seed}
            if self.seed is not None
            else [encode_array(a) for a in self.vectors.inputs]
        )
        data = {
            "format": COMPACT_FORMAT,
            "count": len(self.vectors.outputs[0]),
            "inputs": inputs,
            "outputs": [encode_array(a) for a in self.vectors.outputs],
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def with_outputs(self, outputs: tuple[np.ndarray, ...]) -> SignedGate:
        return SignedGate(GateVectors(self.vectors.inputs, outputs), self.seed)


def signed_gate_ref(ref: GateRef, gate: SignedGate) -> GateRef:
    """``ref`` naming the hashes of ``gate``'s encodings."""
    compact = ref.compact and replace(
        ref.compact, sha256=hashlib.sha256(gate.compact_bytes()).hexdigest()
    )
    return replace(ref, sha256=hashlib.sha256(gate.full_bytes()).hexdigest(), compact=compact)


def read_gate_vectors(data: bytes, meta: ModelMeta) -> GateVectors:
    """Either encoding, checked against the signed tensors and sample count."""
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise MetadataError(f"gate vectors are not JSON: {exc}") from None
    if isinstance(parsed, dict) and parsed.get("format") == COMPACT_FORMAT:
        vectors = _read_compact(parsed, meta)
    else:
        vectors = GateVectors.from_json(parsed)
    _check_shapes(vectors.inputs, meta.inputs, meta.gate.count, "input")
    _check_shapes(vectors.outputs, meta.outputs, meta.gate.count, "output")
    return vectors


def _read_compact(data: dict[str, Any], meta: ModelMeta) -> GateVectors:
    count, inputs, outputs = data.get("count"), data.get("inputs"), data.get("outputs")
    if count != meta.gate.count or not isinstance(outputs, list):
        raise MetadataError(f"compact gate vectors hold {count!r} samples, not {meta.gate.count}")
    values = count * sum(math.prod(spec.shape) for spec in meta.inputs)
    if values > MAX_EVAL_VALUES:
        raise MetadataError(f"{values} gate input values exceed {MAX_EVAL_VALUES}")
    if isinstance(inputs, dict):
        seed = inputs.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise MetadataError(f"bad gate seed {seed!r}")
        made = seeded_inputs(meta.inputs, seed, count)
    elif isinstance(inputs, list):
        made = tuple(decode_array(a) for a in inputs)
    else:
        raise MetadataError("compact gate vectors have no inputs")
    return GateVectors(made, tuple(decode_array(a) for a in outputs))


def _check_shapes(
    arrays: tuple[np.ndarray, ...], specs: tuple[TensorSpec, ...], count: int, kind: str
) -> None:
    if len(arrays) != len(specs):
        raise MetadataError(f"gate vectors have {len(arrays)} {kind}s, the model {len(specs)}")
    for array, spec in zip(arrays, specs, strict=True):
        if array.shape != (count, *spec.shape) or array.dtype != np.dtype(spec.dtype):
            raise MetadataError(
                f"gate {kind} {spec.name}: {array.dtype}{list(array.shape)}, "
                f"signed {spec.dtype}{[count, *spec.shape]}"
            )
