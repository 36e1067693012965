"""Gate vectors in both encodings: what the signer writes is what every device reads back, the
seeded inputs are the same bytes everywhere, and a malformed compact file is one refusal."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.models import model_path
from gateway.releases.model_inspect import ReleaseOptions, build_model_meta, read_model
from protocol.gate_vectors import read_gate_vectors, seeded_inputs
from protocol.model_meta import MetadataError, ModelMeta, TensorSpec


@pytest.fixture(scope="module", params=["kws_f32_v1", "kws_int8_v1"])
def inspected(request):
    data = read_model(model_path(request.param))
    return build_model_meta(data, "kws", 2, ReleaseOptions(samples=16, gate_samples=8, seed=7))


def test_both_encodings_read_back_as_the_signed_vectors(inspected):
    meta, gate = inspected.meta, inspected.gate
    for data in (gate.full_bytes(), gate.compact_bytes()):
        vectors = read_gate_vectors(data, meta)
        for got, want in zip(
            vectors.inputs + vectors.outputs,
            gate.vectors.inputs + gate.vectors.outputs,
            strict=True,
        ):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert meta.gate.sha256 == hashlib.sha256(gate.full_bytes()).hexdigest()
    assert meta.gate.compact is not None
    assert meta.gate.compact.sha256 == hashlib.sha256(gate.compact_bytes()).hexdigest()
    assert meta.gate.compact.path == "kws/2.gate2.json"


def test_the_compact_encoding_carries_the_seed_not_the_inputs(inspected):
    full, compact = inspected.gate.full_bytes(), inspected.gate.compact_bytes()
    assert json.loads(compact)["inputs"] == {"seed": 7}
    assert len(compact) < 600 < len(full) / 4


def test_operator_inputs_travel_in_the_compact_encoding(tmp_path: Path):
    data = read_model(model_path("kws_f32_v1"))
    spec = build_model_meta(data, "kws", 1, ReleaseOptions(samples=2, gate_samples=1)).meta
    own = np.random.default_rng(3).uniform(-1, 1, (4, *spec.inputs[0].shape[1:]))
    np.save(tmp_path / "inputs.npy", own.astype(np.float32))
    options = ReleaseOptions(samples=4, gate_samples=2, reference_inputs=tmp_path / "inputs.npy")
    inspected = build_model_meta(data, "kws", 1, options)
    vectors = read_gate_vectors(inspected.gate.compact_bytes(), inspected.meta)
    np.testing.assert_array_equal(vectors.inputs[0][:, 0], own[:2].astype(np.float32))


def _reference_stream(seed: int, index: int, values: int) -> list[float]:
    """The seeded inputs as the format defines them, written again without numpy: SHAKE-256
    of the domain, seed and tensor index; per value four little-endian words, their top 24 bits
    as uniforms in [0, 1), summed, centred and scaled in float64."""
    stream = hashlib.shake_256(
        b"edgefleet gate inputs v1" + seed.to_bytes(4, "big") + index.to_bytes(2, "big")
    ).digest(16 * values)
    words = struct.unpack(f"<{4 * values}I", stream)
    return [
        (sum((w >> 8) / 2**24 for w in words[4 * i : 4 * i + 4]) - 2) * math.sqrt(3)
        for i in range(values)
    ]


def test_seeded_inputs_follow_the_format_exactly():
    """Signer and device compute these with numpy; the format is fixed by SHAKE-256 and IEEE
    float64 arithmetic alone, so an independent implementation gives the same bytes."""
    specs = (
        TensorSpec("x", (1, 49, 10, 1), "float32"),
        TensorSpec("q", (1, 8), "int8", scale=0.05, zero_point=-3),
    )
    made = seeded_inputs(specs, 12345, 3)
    want = np.array(_reference_stream(12345, 0, 3 * 490), dtype=np.float32)
    assert made[0].tobytes() == want.reshape(3, 1, 49, 10, 1).tobytes()
    quantized = [max(-128, min(127, round(v / 0.05) - 3)) for v in _reference_stream(12345, 1, 24)]
    assert made[1].dtype == np.int8 and made[1].ravel().tolist() == quantized
    values = seeded_inputs((TensorSpec("x", (1000,), "float32"),), 1, 20)[0]
    assert abs(float(values.mean())) < 0.02 and abs(float(values.std()) - 1) < 0.02
    assert float(np.abs(values).max()) <= 2 * np.sqrt(3)


def test_a_count_other_than_the_signed_one_is_refused(inspected):
    compact = json.loads(inspected.gate.compact_bytes())
    compact["count"] = 9
    with pytest.raises(MetadataError, match="9 samples, not 8"):
        read_gate_vectors(json.dumps(compact).encode(), inspected.meta)


def test_a_huge_signed_count_is_refused_before_any_input_is_made(inspected):
    meta: ModelMeta = inspected.meta
    huge = replace(meta, gate=replace(meta.gate, count=10**9))
    compact = json.loads(inspected.gate.compact_bytes())
    compact["count"] = 10**9
    with pytest.raises(MetadataError, match="exceed"):
        read_gate_vectors(json.dumps(compact).encode(), huge)


def test_outputs_of_another_shape_are_refused(inspected):
    compact = json.loads(inspected.gate.compact_bytes())
    compact["outputs"] = compact["outputs"][:0]
    with pytest.raises(MetadataError, match="0 outputs, the model 1"):
        read_gate_vectors(json.dumps(compact).encode(), inspected.meta)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(["format", "count", "inputs", "outputs", "seed"]), value=_json)
def test_any_malformed_compact_file_is_one_refusal(inspected, key, value):
    compact = json.loads(inspected.gate.compact_bytes())
    if key == "seed":
        compact["inputs"] = {"seed": value}
    else:
        compact[key] = value
    try:
        vectors = read_gate_vectors(json.dumps(compact).encode(), inspected.meta)
    except MetadataError:
        return
    assert len(vectors.outputs[0]) == inspected.meta.gate.count


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.binary(max_size=64))
def test_bytes_that_are_not_gate_vectors_are_one_refusal(inspected, junk):
    with pytest.raises(MetadataError):
        read_gate_vectors(junk, inspected.meta)
