"""The delta container: round trips, the full-model fallback, and refusals."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.models import model_pairs, model_path
from protocol.delta import Algorithm, DeltaError, apply_delta, make_delta, read_header


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
    with pytest.raises(DeltaError):
        apply_delta(old, bytes(delta))


def test_every_byte_of_a_real_model_delta_is_covered():
    pair = model_pairs()[0]
    old = model_path(pair["old"]).read_bytes()
    new = model_path(pair["new"]).read_bytes()
    delta = make_delta(old, new)
    for index in range(len(delta)):
        corrupt = bytearray(delta)
        corrupt[index] ^= 0x01
        with pytest.raises(DeltaError):
            apply_delta(old, bytes(corrupt))


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


@pytest.mark.parametrize("algorithm", [Algorithm.BSDIFF4, Algorithm.XOR_PLANES_LZMA])
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
    xor = make_delta(old, new, algorithms=[Algorithm.XOR_PLANES_LZMA])
    assert len(xor) < 0.8 * len(make_delta(old, new, algorithms=[Algorithm.BSDIFF4]))
    assert read_header(make_delta(old, new)).algorithm == Algorithm.XOR_PLANES_LZMA


def test_unrelated_random_target_ships_the_full_model():
    old, new = os.urandom(4096), os.urandom(4096)
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
