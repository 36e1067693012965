"""The health gate: real models that must be refused before the switch, run through the update
worker as a real process, and the verdict as a pure function."""

from __future__ import annotations

import numpy as np
import pytest

from agent.updater.gate import judge_gate, signature_problems
from protocol.model_meta import GateRef, ModelMeta, TensorSpec
from tests.updater.conftest import TOO_SLOW, open_world
from tests.updater.support import assert_consistent, final, model, release, transitions, worker

CASES = {
    # version: (what is wrong, words the refusal must contain)
    3: ("wrong tensor signature", "signed float32[1, 49, 10]"),
    4: ("wrong reference outputs", "reference outputs reproduced on"),
    5: ("too slow", "exceeds budget"),
    6: ("corrupt model file", "does not load"),
}


def sign_bad_releases(repo):
    v2 = model("kws_f32_v2_head")
    release(repo, model("vision_f32_v1"), 3, signed_as=v2)
    release(repo, v2, 4, edit_outputs=lambda outputs: outputs[..., ::-1].copy())
    release(repo, v2, 5, TOO_SLOW)
    release(repo, v2[: len(v2) // 2], 6, signed_as=v2)


@pytest.fixture(scope="module")
def bad_world(tmp_path_factory):
    with open_world(tmp_path_factory.mktemp("gate"), sign_bad_releases) as opened:
        yield opened


@pytest.mark.parametrize("version", sorted(CASES), ids=[CASES[v][0] for v in sorted(CASES)])
def test_a_model_failing_the_gate_is_refused_before_the_switch(bad_world, tmp_path, version):
    state_dir = bad_world.device(tmp_path)
    result = worker(
        state_dir,
        bad_world.root,
        "run",
        "--repository",
        bad_world.url,
        "--target",
        f"kws/{version}.tflite",
    )
    saved = final(result)
    assert transitions(result) == ["OFFERED", "DOWNLOADING", "VERIFIED", "INSTALLED", "REFUSED"]
    assert saved["reason"].startswith("health gate:")
    assert CASES[version][1] in saved["reason"]
    assert assert_consistent(state_dir, {bad_world.v1})[0] == bad_world.v1


def meta(budget_ms: float = 10.0, atol: float = 0.01) -> ModelMeta:
    spec = TensorSpec("out", (1, 3), "float32")
    return ModelMeta(
        name="m",
        version=1,
        inputs=(TensorSpec("in", (1, 2), "float32"),),
        outputs=(spec,),
        gate=GateRef("m/1.gate.json", "0" * 64, 2, atol, 1.0),
        latency_budget_ms=budget_ms,
        drift=None,
    )


EXPECTED = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]], dtype=np.float32)


def test_the_verdict_passes_outputs_within_tolerance_and_budget():
    verdict = judge_gate(meta(), [], EXPECTED + 0.005, EXPECTED, [1.0, 2.0])
    assert verdict.passed and verdict.median_latency_ms == 1.5


@pytest.mark.parametrize(
    ("outputs", "latencies", "words"),
    [
        (EXPECTED + 0.05, [1.0], "reproduced on 0%"),
        (EXPECTED[:, ::-1], [1.0], "top class agrees on 50%"),
        (EXPECTED, [11.0, 30.0], "exceeds budget"),
        (EXPECTED, [], "exceeds budget"),
    ],
)
def test_the_verdict_names_what_failed(outputs, latencies, words):
    verdict = judge_gate(meta(), [], outputs, EXPECTED, latencies)
    assert not verdict.passed and words in verdict.summary


def test_a_signature_mismatch_is_named():
    signed = (TensorSpec("x", (1, 49, 10), "int8", 0.5, 3),)
    assert signature_problems(signed, signed) == []
    assert (
        "quantization"
        in signature_problems(signed, (TensorSpec("x", (1, 49, 10), "int8", 0.25, 3),))[0]
    )
    assert "float32" in signature_problems(signed, (TensorSpec("x", (1, 49, 10), "float32"),))[0]
    assert "2 tensors" in signature_problems(signed, signed * 2)[0]
