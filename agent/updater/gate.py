"""The health gate a candidate model must pass before it may become the active one.

``judge_gate`` is the decision, a pure function of the signed expectations and what the model
did; ``run_gate`` loads the model with the agent's own engine and feeds it the signed reference
inputs, and the signed evaluation set when the release has one (its accuracy floor stands next
to the latency budget). It runs in the update worker, so a model that crashes the runtime takes
only the worker down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet.engine import Engine, EngineError
from protocol.model_meta import EvalSet, GateVectors, ModelMeta, TensorSpec

SCALE_RTOL = 1e-6
WARMUP_INVOKES = 2


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: tuple[str, ...] = ()
    median_latency_ms: float | None = None

    @property
    def summary(self) -> str:
        return "passed" if self.passed else "; ".join(self.reasons)


def signature_problems(signed: Sequence[TensorSpec], actual: Sequence[TensorSpec]) -> list[str]:
    """How the model's tensors differ from the signed signature (empty when they match)."""
    if len(signed) != len(actual):
        return [f"{len(actual)} tensors where {len(signed)} were signed"]
    problems = []
    for want, got in zip(signed, actual, strict=True):
        if want.shape != got.shape or want.dtype != got.dtype:
            problems.append(
                f"tensor {got.name}: {got.dtype}{list(got.shape)}, "
                f"signed {want.dtype}{list(want.shape)}"
            )
        elif not np.isclose(want.scale, got.scale, rtol=SCALE_RTOL, atol=0.0) or (
            want.zero_point != got.zero_point
        ):
            problems.append(f"tensor {got.name}: quantization differs from the signed one")
    return problems


def judge_gate(
    meta: ModelMeta,
    problems: Sequence[str],
    outputs: np.ndarray | None,
    expected: np.ndarray,
    latencies_ms: Sequence[float] | npt.NDArray[np.float64],
    accuracy: float | None = None,
) -> GateVerdict:
    """Pass when the signature matches, the reference outputs are reproduced within the signed
    tolerance on at least ``min_top1_agreement`` of the samples (and agree on the top class as
    often), the median latency is within the signed budget, and, when the release signed an
    evaluation set, the ``accuracy`` measured on it reaches the signed floor."""
    reasons = list(problems)
    if outputs is None:
        return GateVerdict(False, tuple(reasons or ["model produced no outputs"]))
    outputs = outputs.reshape(len(expected), -1)
    expected = expected.reshape(len(expected), -1)
    within = np.all(np.abs(outputs - expected) <= meta.gate.atol, axis=1).mean()
    agree = (outputs.argmax(axis=1) == expected.argmax(axis=1)).mean()
    need = meta.gate.min_top1_agreement
    if within < need:
        reasons.append(f"reference outputs reproduced on {within:.0%} of samples, need {need:.0%}")
    if agree < need:
        reasons.append(f"top class agrees on {agree:.0%} of samples, need {need:.0%}")
    median = float(np.median(latencies_ms)) if len(latencies_ms) else None
    if median is None or median > meta.latency_budget_ms:
        reasons.append(f"median latency {median} ms exceeds budget {meta.latency_budget_ms} ms")
    floor = meta.evaluation
    if floor is not None and (accuracy is None or accuracy < floor.min_accuracy):
        measured = "not measured" if accuracy is None else f"{accuracy:.3f}"
        reasons.append(
            f"accuracy {measured} on the signed evaluation set (n={floor.count}) is below "
            f"the floor {floor.min_accuracy:g}"
        )
    return GateVerdict(not reasons, tuple(reasons), median)


def run_gate(
    model: Path,
    meta: ModelMeta,
    vectors: GateVectors,
    engine: str = "auto",
    evaluation: EvalSet | None = None,
) -> GateVerdict:
    """Load ``model`` and judge it against the signed metadata, reference vectors and
    evaluation set."""
    try:
        loaded = Engine(model, engine)
    except EngineError as exc:
        return GateVerdict(False, (f"model does not load: {exc}",))
    try:
        problems = signature_problems(meta.inputs, (loaded.input,))
        problems += signature_problems(meta.outputs, (loaded.output,))
        expected = meta.outputs[0].dequantize(vectors.outputs[0])
        if problems or len(vectors.inputs) != 1:
            return judge_gate(meta, problems or ["gate vectors do not fit"], None, expected, ())
        samples = meta.inputs[0].dequantize(vectors.inputs[0]).reshape(-1, *loaded.sample_shape)
        loaded.infer(samples[:1].repeat(WARMUP_INVOKES, axis=0))
        result = loaded.infer(samples)
        accuracy = None
        if evaluation is not None:
            labelled = meta.inputs[0].dequantize(evaluation.inputs)
            scores = loaded.infer(labelled.reshape(-1, *loaded.sample_shape)).scores
            accuracy = float((scores.argmax(axis=1) == evaluation.labels).mean())
        latencies = result.latency_us / 1000.0
        return judge_gate(meta, [], result.scores, expected, latencies, accuracy)
    except (EngineError, ValueError, RuntimeError) as exc:
        return GateVerdict(False, (f"model failed on the reference inputs: {exc}",))
    finally:
        loaded.close()
