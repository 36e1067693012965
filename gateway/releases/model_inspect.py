"""What a release signs about a model, read from the model itself.

Loads the .tflite with LiteRT, reads its tensor signature, runs it on reference inputs (seeded,
or the operator's own) to record the outputs the health gate will expect, times it, and builds
drift reference histograms over those inputs and outputs. Given a labelled evaluation set, it
measures the model's accuracy on it against the operator's minimum (``evaluation.py``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.runtime_output import runtime_output_logged
from gateway.releases import evaluation
from gateway.releases.errors import ReleaseError, check_range
from protocol.drift import DriftReference
from protocol.gate_vectors import SignedGate, seeded_inputs, signed_gate_ref
from protocol.model_meta import (
    NAME_PATTERN,
    CompactGateRef,
    GateRef,
    GateVectors,
    ModelMeta,
    TensorSpec,
    gate_compact_path,
)
from protocol.topics import MAX_HARDWARE_TAGS

TFLITE_IDENTIFIER = b"TFL3"
# Drift reference histograms from 32 inputs alarmed on a stationary source within seconds: the
# reference's own sampling noise was larger than the alarm threshold. From 1,000 inputs the
# worst PSI of a stationary window of 500 stays near a third of the default alarm (0.25).
DEFAULT_SAMPLES = 1000
MIN_DRIFT_SAMPLES = 500
DEFAULT_GATE_SAMPLES = 8
MAX_SAMPLES = 100_000
MIN_LATENCY_BUDGET_MS = 50.0
LATENCY_BUDGET_FACTOR = 20.0  # an operator's machine is often 10-20x faster than a Pi-class one


@dataclass(frozen=True)
class ReleaseOptions:
    samples: int = DEFAULT_SAMPLES
    gate_samples: int = DEFAULT_GATE_SAMPLES
    seed: int = 0
    reference_inputs: Path | None = None
    atol: float | None = None
    latency_budget_ms: float | None = None
    arena_bytes: int | None = None
    hardware_tags: tuple[str, ...] = ()
    eval_set: Path | None = None  # a labelled .npz, or a folder holding eval.npz
    min_accuracy: float | None = None
    sign_below_minimum: bool = False
    probation_min_agreement: float | None = None  # what probation should expect, signed
    probation_max_psi: float | None = None

    def check(self) -> None:
        """Refuse what would sign a release no device can pass or match, naming the option."""
        check_range("--samples", self.samples, 1, MAX_SAMPLES)
        check_range("--gate-samples", self.gate_samples, 1, self.samples)
        check_range("--seed", self.seed, 0, 2**32 - 1)
        if self.atol is not None:
            check_range("--atol", self.atol, 0, math.inf)
        if self.latency_budget_ms is not None:
            check_range("--latency-budget-ms", self.latency_budget_ms, 1e-6, 3_600_000)
        if self.arena_bytes is not None:
            check_range("--arena-bytes", self.arena_bytes, 1, 2**31 - 1)
        if len(self.hardware_tags) > MAX_HARDWARE_TAGS:
            raise ReleaseError(f"--hardware-tag: at most {MAX_HARDWARE_TAGS} tags")
        if (self.eval_set is None) != (self.min_accuracy is None):
            raise ReleaseError("--eval-set and --min-accuracy go together")
        if self.min_accuracy is not None:
            check_range("--min-accuracy", self.min_accuracy, 0, 1)
        if self.probation_min_agreement is not None:
            check_range("--probation-min-agreement", self.probation_min_agreement, 0, 1)
        if self.probation_max_psi is not None:
            check_range("--probation-max-psi", self.probation_max_psi, 0, 1000)
        if self.sign_below_minimum and self.eval_set is None:
            raise ReleaseError("--sign-below-minimum needs --eval-set and --min-accuracy")
        for tag in self.hardware_tags:
            if not NAME_PATTERN.fullmatch(tag):
                raise ReleaseError(
                    f"--hardware-tag {tag!r}: a tag is a name of letters, digits, '_', '.' and "
                    "'-' (at most 64), as devices report them"
                )


@dataclass(frozen=True)
class InspectedModel:
    meta: ModelMeta
    gate: SignedGate
    warnings: tuple[str, ...] = ()  # signable, but the operator should know
    eval_bytes: bytes | None = None  # the evaluation set target, when the meta names one


def read_model(path: Path) -> bytes:
    """The model's bytes, or a one-line refusal naming the file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise ReleaseError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read model file: {exc.strerror}") from None
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ReleaseError(f"{path}: not a TFLite model (no TFL3 identifier)")
    return data


def _interpreter(data: bytes, path: Path):
    from ai_edge_litert.interpreter import Interpreter

    try:
        with runtime_output_logged("litert"):
            interpreter = Interpreter(model_content=data)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReleaseError(f"{path}: LiteRT cannot load the model: {first_line}") from None
    return interpreter


def _reference_inputs(specs, options: ReleaseOptions, path: Path) -> list[np.ndarray]:
    """Float reference inputs, ``[N, *tensor shape]`` per input tensor."""
    if options.reference_inputs is None:
        rng = np.random.default_rng(options.seed)
        return [
            rng.standard_normal((options.samples, *spec.shape)).astype(np.float32) for spec in specs
        ]
    if len(specs) != 1:
        raise ReleaseError(f"{path}: --reference-inputs supports single-input models only")
    source = options.reference_inputs
    try:
        array = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{source}: cannot read reference inputs (.npy): {exc}") from None
    shape = specs[0].shape
    if array.shape[1:] == shape[1:] and shape[0] == 1:
        array = array.reshape(len(array), *shape)
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape or len(array) == 0:
        raise ReleaseError(
            f"{source}: reference inputs have shape {array.shape}, expected [N, *{list(shape)}]"
        )
    return [array.astype(np.float32)]


def _invoke(interpreter, raw_inputs: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """Each sample through the model: raw outputs ``[N, *tensor shape]`` per output tensor,
    and the invoke latency of each sample in ms."""
    raw_outputs: list[list[np.ndarray]] = [[] for _ in interpreter.get_output_details()]
    latencies = []
    for index in range(len(raw_inputs[0])):
        for detail, batch in zip(interpreter.get_input_details(), raw_inputs, strict=True):
            interpreter.set_tensor(detail["index"], batch[index])
        started = time.perf_counter()
        interpreter.invoke()
        latencies.append((time.perf_counter() - started) * 1000)
        for slot, detail in zip(raw_outputs, interpreter.get_output_details(), strict=True):
            slot.append(interpreter.get_tensor(detail["index"]).copy())
    return [np.stack(slot) for slot in raw_outputs], latencies


def _evaluate(
    interpreter, inputs, outputs, name: str, version: int, options: ReleaseOptions, path: Path
):
    """Accuracy on the operator's labelled set: the signed entry, the set's bytes, warnings."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise ReleaseError(f"{path}: --eval-set supports models with one input and one output")
    classes = math.prod(outputs[0].shape[1:])
    labelled = evaluation.read_eval_set(options.eval_set, inputs[0], classes)
    (scores,), _ = _invoke(interpreter, [labelled.inputs])
    predicted = scores.reshape(len(scores), -1).argmax(axis=1)
    measured = evaluation.Measured(int((predicted == labelled.labels).sum()), len(predicted))
    data = labelled.to_bytes()
    ref, warnings = evaluation.judge(
        measured, options.min_accuracy, name, version, data, options.sign_below_minimum
    )
    return ref, data, warnings


def build_model_meta(
    data: bytes, name: str, version: int, options: ReleaseOptions, path: Path = Path("<model>")
) -> InspectedModel:
    """Run the model on its reference inputs and describe it for signing."""
    options.check()
    interpreter = _interpreter(data, path)
    inputs = [TensorSpec.from_details(d) for d in interpreter.get_input_details()]
    outputs = [TensorSpec.from_details(d) for d in interpreter.get_output_details()]
    eval_ref, eval_bytes, warnings = None, None, ()
    if options.eval_set is not None:  # a refusal comes before the longer reference run
        eval_ref, eval_bytes, warnings = _evaluate(
            interpreter, inputs, outputs, name, version, options, path
        )
    float_inputs = _reference_inputs(inputs, options, path)
    raw_inputs = [spec.quantize(batch) for spec, batch in zip(inputs, float_inputs, strict=True)]
    count = len(raw_inputs[0])

    outputs_raw, latencies = _invoke(interpreter, raw_inputs)
    float_outputs = [spec.dequantize(o) for spec, o in zip(outputs, outputs_raw, strict=True)]

    gate = _gate_vectors(interpreter, inputs, raw_inputs, options)
    gate_count = len(gate.vectors.outputs[0])
    median_ms = statistics.median(latencies[1:] or latencies)
    atol = options.atol
    if atol is None:  # one quantization step, or a float tolerance for kernel differences
        atol = max([2 * spec.scale for spec in outputs if spec.quantized] or [1e-3])
    budget = options.latency_budget_ms or max(
        MIN_LATENCY_BUDGET_MS, round(median_ms * LATENCY_BUDGET_FACTOR, 3)
    )
    meta = ModelMeta(
        name=name,
        version=version,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        gate=signed_gate_ref(
            GateRef(
                path=f"{name}/{version}.gate.json",
                sha256="",
                count=gate_count,
                atol=float(atol),
                min_top1_agreement=0.9,
                compact=CompactGateRef(gate_compact_path(name, version), ""),
            ),
            gate,
        ),
        latency_budget_ms=float(budget),
        drift=DriftReference.build(float_inputs[0], float_outputs[0]),
        arena_bytes=options.arena_bytes,
        hardware_tags=options.hardware_tags,
        measured={"invoke_median_ms": round(median_ms, 4), "reference_samples": count},
        evaluation=eval_ref,
        probation_min_agreement=options.probation_min_agreement,
        probation_max_psi=options.probation_max_psi,
    )
    if count < MIN_DRIFT_SAMPLES:
        warnings += (
            f"the drift reference comes from {count} inputs: fewer than {MIN_DRIFT_SAMPLES} "
            "are noisy enough to raise false drift alarms",
        )
    return InspectedModel(meta, gate, warnings, eval_bytes)


def _gate_vectors(interpreter, specs, raw_inputs, options: ReleaseOptions) -> SignedGate:
    """The operator's first reference inputs, or inputs generated from the seed (which a device
    makes again from the seed alone), and the model's outputs on them."""
    count = min(options.gate_samples, len(raw_inputs[0]))
    if options.reference_inputs is not None:
        inputs = tuple(batch[:count] for batch in raw_inputs)
        seed = None
    else:
        inputs = seeded_inputs(tuple(specs), options.seed, count)
        seed = options.seed
    outputs, _ = _invoke(interpreter, list(inputs))
    return SignedGate(GateVectors(inputs, tuple(outputs)), seed)
