"""The delta container: round trips, the full-model fallback, sizes against bsdiff4, and
refusals."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import bsdiff4
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.models import model_pairs, model_path
from protocol import tflite_layout
from protocol.delta import (
    Algorithm,
    DeltaError,
    Expected,
    apply_delta,
    make_delta,
    read_header,
)
from tests.support.hostile_deltas import container


def applies_to_target_or_refuses(old: bytes, new: bytes, delta: bytes) -> None:
    """A changed container is refused, or (a change a decoder cannot see, such as an unused
    bit of a deflate block) still rebuilds exactly the target: never anything else."""
    expected = Expected(hashlib.sha256(old).digest(), hashlib.sha256(new).digest(), len(new))
    try:
        rebuilt = apply_delta(old, delta, expected)
    except DeltaError:
        return
    assert rebuilt == new


@settings(max_examples=200, deadline=None)
@given(old=st.binary(max_size=2048), new=st.binary(max_size=2048))
def test_round_trip_on_arbitrary_bytes(old, new):
    assert apply_delta(old, make_delta(old, new)) == new


@settings(max_examples=300, deadline=None)
@given(
    old=st.binary(min_size=1, max_size=512),
    new=st.binary(min_size=1, max_size=512),
    data=st.data(),
)
def test_any_single_byte_corruption_is_refused(old, new, data):
    delta = bytearray(make_delta(old, new))
    index = data.draw(st.integers(0, len(delta) - 1), label="index")
    delta[index] ^= data.draw(st.integers(1, 255), label="xor")
    applies_to_target_or_refuses(old, new, bytes(delta))


def test_every_byte_of_a_real_model_delta_is_covered():
    pair = model_pairs()[0]
    old = model_path(pair["old"]).read_bytes()
    new = model_path(pair["new"]).read_bytes()
    delta = make_delta(old, new)
    assert read_header(delta).algorithm == Algorithm.TENSOR_LZMA
    for index in range(len(delta)):
        corrupt = bytearray(delta)
        corrupt[index] ^= 0x01
        applies_to_target_or_refuses(old, new, bytes(corrupt))
        with pytest.raises(DeltaError):  # and without Expected, by the header's own prefix
            assert apply_delta(old, bytes(corrupt)) == new


@pytest.mark.parametrize("pair", model_pairs(), ids=lambda p: p["name"])
def test_real_model_pairs(pair):
    old = model_path(pair["old"]).read_bytes()
    new = model_path(pair["new"]).read_bytes()
    delta = make_delta(old, new)
    assert apply_delta(old, delta) == new
    assert len(delta) < len(new)


def test_head_only_fine_tune_gives_a_small_patch():
    old = model_path("kws_f32_v1").read_bytes()
    new = model_path("kws_f32_v2_head").read_bytes()
    header = read_header(make_delta(old, new))
    assert header.algorithm != Algorithm.FULL_ZLIB
    assert header.payload_length < len(new) // 10


@pytest.mark.parametrize("algorithm", [Algorithm.BSDIFF4, Algorithm.TENSOR_LZMA])
@pytest.mark.parametrize("pair", model_pairs(), ids=lambda p: p["name"])
def test_each_patch_algorithm_round_trips_on_real_pairs(pair, algorithm):
    old = model_path(pair["old"]).read_bytes()
    new = model_path(pair["new"]).read_bytes()
    delta = make_delta(old, new, algorithms=[algorithm])
    assert read_header(delta).algorithm == algorithm
    assert apply_delta(old, delta) == new


def test_the_model_aware_codec_beats_bsdiff_on_a_float_fine_tune():
    old = model_path("kws_f32_v1").read_bytes()
    new = model_path("kws_f32_v2_full").read_bytes()
    tensor = make_delta(old, new, algorithms=[Algorithm.TENSOR_LZMA])
    assert len(tensor) < 0.8 * len(make_delta(old, new, algorithms=[Algorithm.BSDIFF4]))
    assert read_header(make_delta(old, new)).algorithm == Algorithm.TENSOR_LZMA


# The container, header included, against the raw bsdiff4 patch of the same pair.
SIZE_TARGETS = {"head": 1.0, "full": 0.85}


@pytest.mark.parametrize("pair", model_pairs(), ids=lambda p: p["name"])
def test_container_against_raw_bsdiff4(pair):
    old = model_path(pair["old"]).read_bytes()
    new = model_path(pair["new"]).read_bytes()
    ratio = len(make_delta(old, new)) / len(bsdiff4.diff(old, new))
    assert ratio <= SIZE_TARGETS[pair["name"].rsplit("_", 1)[1]]


def test_a_small_head_only_delta_is_smaller_than_raw_bsdiff4():
    """A head-only fine-tune changes a few hundred bytes: the container's fixed part must not
    eat what the codec saves (format 1's was 118 bytes)."""
    old = model_path("kws_int8_v1").read_bytes()
    new = model_path("kws_int8_v2_head").read_bytes()
    delta = make_delta(old, new)
    assert len(delta) <= 0.8 * len(bsdiff4.diff(old, new))


@pytest.mark.parametrize("pair", model_pairs(), ids=lambda p: p["name"])
def test_apply_peak_memory_is_under_three_models(pair):
    old = model_path(pair["old"]).read_bytes()
    new = model_path(pair["new"]).read_bytes()
    delta = make_delta(old, new)
    tracemalloc.start()
    try:
        rebuilt = apply_delta(old, delta)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rebuilt == new
    assert peak <= 3 * len(new), f"{peak / len(new):.2f} x the model"


def perturbed(model: bytes, seed: int, scale: float) -> bytes:
    """``model`` with every 4-byte word past its first kilobyte nudged as a fine-tune would."""
    words = np.frombuffer(model, np.float32, (len(model) - 1024) // 4, 1024).copy()
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):
        words *= 1 + rng.normal(0, scale, words.shape).astype(np.float32)
    return model[:1024] + words.tobytes() + model[1024 + words.nbytes :]


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["kws_f32_v1", "kws_int8_v1", "vision_int8_v1"]),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1e-3, 1e-1]),
)
def test_round_trip_on_structured_fine_tunes(name, seed, scale):
    """Scales and quantized tensors change too: predictions from garbage scales still invert."""
    old = model_path(name).read_bytes()
    new = perturbed(old, seed, scale)
    delta = make_delta(old, new, [Algorithm.TENSOR_LZMA])
    assert apply_delta(old, delta) == new


def int8_nudged(model: bytes, seed: int, reach: int, share: float) -> bytes:
    """``model`` with a ``share`` of each int8 tensor's weights moved by up to ``reach`` steps
    (wrapping), as a full fine-tune of a quantized model moves them."""
    data = np.frombuffer(model, np.uint8).copy()
    rng = np.random.default_rng(seed)
    for region in tflite_layout.regions(model):
        if region.kind == tflite_layout.INT8 and region.length:
            span = data[region.start : region.start + region.length]
            moved = rng.random(region.length) < share
            steps = rng.integers(-reach, reach + 1, region.length).astype(np.uint8)
            span[moved] += steps[moved]
    return data.tobytes()


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["kws_int8_v1", "vision_int8_v1"]),
    seed=st.integers(0, 2**32 - 1),
    reach=st.sampled_from([1, 2, 7, 8, 40]),
    share=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
)
def test_int8_weights_round_trip_packed_or_not(name, seed, reach, share):
    """Differences of up to 7 steps pack two to a byte, larger ones do not (zigzag 16 and
    more): either way, and with both kinds of regions in one model, the target comes back."""
    old = model_path(name).read_bytes()
    new = int8_nudged(old, seed, reach, share)
    delta = make_delta(old, new, [Algorithm.TENSOR_LZMA])
    assert apply_delta(old, delta) == new


def test_a_quantized_full_fine_tune_packs_its_small_differences():
    """kws int8 v2 (every layer fine-tuned) moves weights by a step or two: the int8 regions
    travel two differences per byte, and the delta is well under the raw bsdiff4 patch."""
    old = model_path("kws_int8_v1").read_bytes()
    new = model_path("kws_int8_v2_full").read_bytes()
    int8 = [r for r in tflite_layout.regions(old) if r.kind == tflite_layout.INT8]
    delta = make_delta(old, new, [Algorithm.TENSOR_LZMA])
    header = read_header(delta)
    predict_bytes = (sum(r.quantized is not None for r in tflite_layout.regions(old)) + 7) // 8
    flags = delta[header.payload_offset + predict_bytes :][: (len(int8) + 7) // 8]
    assert int.from_bytes(flags, "little") == (1 << len(int8)) - 1
    assert len(delta) <= 0.8 * len(bsdiff4.diff(old, new))


KWS_INT8_FULL: list[bytes] = []


def kws_int8_full_delta() -> bytes:
    if not KWS_INT8_FULL:
        old = model_path("kws_int8_v1").read_bytes()
        new = model_path("kws_int8_v2_full").read_bytes()
        KWS_INT8_FULL.append(make_delta(old, new, [Algorithm.TENSOR_LZMA]))
    return KWS_INT8_FULL[0]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_mutated_tensor_delta_is_refused_or_exact(data):
    """Changed bytes, truncation and appended bytes, on a real model's tensor delta: a
    DeltaError or the target, never a crash or an allocation past three models."""
    old = model_path("kws_int8_v1").read_bytes()
    new = model_path("kws_int8_v2_full").read_bytes()
    delta = bytearray(kws_int8_full_delta())
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        at = data.draw(st.integers(0, len(delta) - 1), label="at")
        delta[at] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(delta)), label="cut")
    mutated = bytes(delta[:cut]) + data.draw(st.binary(max_size=16), label="tail")
    tracemalloc.start()
    try:
        applies_to_target_or_refuses(old, new, mutated)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 3 * len(new)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300))
def test_an_arbitrary_tensor_payload_is_refused_or_exact(payload):
    """A hostile gateway may sign any payload under a header naming the right models."""
    old = model_path("kws_int8_v1").read_bytes()
    new = model_path("kws_int8_v2_head").read_bytes()
    source, target = hashlib.sha256(old).digest(), hashlib.sha256(new).digest()
    delta = container(Algorithm.TENSOR_LZMA, source, target, len(new), payload)
    applies_to_target_or_refuses(old, new, delta)


def test_a_format_1_container_is_refused_in_one_line():
    format_1 = b"EFDL\x01\x02" + bytes(200)
    with pytest.raises(DeltaError) as refused:
        apply_delta(b"old", format_1)
    assert str(refused.value) == (
        "delta format 1 is not accepted (format 2 only): ask the gateway to make it again"
    )


def test_unrelated_random_target_ships_the_full_model():
    old, new = os.urandom(4096), os.urandom(4000)
    delta = make_delta(old, new)
    assert read_header(delta).algorithm == Algorithm.FULL_ZLIB
    assert apply_delta(b"", delta) == new  # a full container needs no source


def test_wrong_source_is_refused():
    old = model_path("kws_f32_v1").read_bytes()
    new = model_path("kws_f32_v2_full").read_bytes()
    delta = make_delta(old, new)
    assert read_header(delta).algorithm != Algorithm.FULL_ZLIB
    with pytest.raises(DeltaError, match="source"):
        apply_delta(model_path("kws_f32_v2_head").read_bytes(), delta)


@pytest.mark.parametrize("blob", [b"", b"EFDL", b"x" * 200])
def test_garbage_is_refused(blob):
    with pytest.raises(DeltaError):
        apply_delta(b"old", blob)
