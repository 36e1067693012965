"""Signed ML metadata and drift references: round trips, and refusals of malformed input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefleet.models import model_path
from gateway.releases.model_inspect import ReleaseOptions, build_model_meta, read_model
from protocol.drift import DriftReference, Histogram, bin_counts, feature_summary, make_edges, psi
from protocol.model_meta import GateVectors, MetadataError, ModelMeta, TensorSpec


@pytest.fixture(scope="module")
def meta() -> ModelMeta:
    data = read_model(model_path("kws_int8_v1"))
    return build_model_meta(data, "kws", 3, ReleaseOptions(samples=8, gate_samples=4)).meta


def test_round_trip_through_canonical_json(meta):
    text = json.dumps(meta.to_json(), sort_keys=True)
    assert ModelMeta.from_json(json.loads(text)) == meta
    assert not any(isinstance(v, float) for v in _leaves(meta.to_json()))


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("format",), 99),
        (("version",), 0),
        (("name",), "../etc"),
        (("inputs",), []),
        (("latency_budget_ms",), "-1"),
        (("gate", "sha256"), "xyz"),
        (("inputs", 0, "dtype"), "complex128"),
        (("drift", "inputs", 0, "edges"), ["1", "0"]),
        (("drift", "inputs", 0, "counts"), [1]),
    ],
)
def test_malformed_metadata_is_refused(meta, path, value):
    data = json.loads(json.dumps(meta.to_json()))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises((MetadataError, ValueError)):
        ModelMeta.from_json(data)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    )
)
def test_arbitrary_json_gives_only_the_schema_error(value):
    with pytest.raises(MetadataError):
        ModelMeta.from_json(value if isinstance(value, dict) else {"format": 1, "x": value})


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.int8, np.float32, np.uint8]),
        hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
    )
)
def test_gate_vectors_round_trip(array):
    batch = array.reshape(1, *array.shape)
    vectors = GateVectors((batch,), (batch.astype(np.float32),))
    decoded = GateVectors.from_json(json.loads(json.dumps(vectors.to_json())))
    np.testing.assert_array_equal(decoded.inputs[0], batch)
    assert decoded.inputs[0].dtype == batch.dtype


@settings(max_examples=200, deadline=None)
@given(st.floats(-100, 100, allow_nan=False), st.floats(0.001, 2), st.integers(-128, 127))
def test_int8_quantize_then_dequantize_is_within_half_a_step(value, scale, zero_point):
    spec = TensorSpec("x", (1,), "int8", scale, zero_point)
    raw = spec.quantize(np.array([value]))
    back = float(spec.dequantize(raw)[0])
    representable = (-128 - zero_point) * scale <= value <= (127 - zero_point) * scale
    if representable:
        assert abs(back - value) <= scale / 2 + 1e-6
    else:
        assert raw[0] in (-128, 127)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(2, 200), elements=st.floats(-1e6, 1e6)))
def test_histograms_count_every_value_and_psi_of_itself_is_zero(values):
    reference = DriftReference.build(values.reshape(-1, 1), np.stack([values, -values], axis=1))
    counts = bin_counts(values, reference.inputs[0].edges)
    assert counts.sum() == len(values)
    assert psi(reference.inputs[0].counts, counts) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.integers(1, 50), elements=st.floats(-1e300, 1e300, allow_subnormal=False)
    ),
    st.integers(1, 20),
)
def test_signed_edges_are_short_increasing_and_span_the_values(values, bins):
    edges = make_edges(values, bins)
    assert len(edges) == bins + 1
    assert all(b > a for a, b in itertools.pairwise(edges))
    width = (edges[-1] - edges[0]) / bins
    assert edges[0] <= values.min() + width / 100 and edges[-1] >= values.max() - width / 100
    assert Histogram.from_json(Histogram(edges, (0,) * bins).to_json()).edges == edges
    spread = float(values.max()) - float(values.min())
    if 1e-6 < spread < 1e6 and abs(values).max() < 1e6:
        assert max(len(repr(e)) for e in edges) <= 14


def test_psi_grows_with_a_shift():
    rng = np.random.default_rng(0)
    base = feature_summary(rng.normal(size=(500, 4, 3)))[:, 0]
    reference = DriftReference.build(base.reshape(-1, 1), np.ones((500, 2)))
    edges, ref_counts = reference.inputs[0].edges, reference.inputs[0].counts
    same = feature_summary(rng.normal(size=(500, 4, 3)))[:, 0]
    shifted = feature_summary(rng.normal(0.5, 1.0, size=(500, 4, 3)))[:, 0]
    assert psi(ref_counts, bin_counts(same, edges)) < 0.1
    assert psi(ref_counts, bin_counts(shifted, edges)) > 0.25
