"""The inference engine: a TFLite interpreter (LiteRT, else tflite-runtime) behind one call that
takes float samples and returns float scores, quantizing and dequantizing int8 tensors.

``infer`` is blocking and meant to run in the pipeline's engine thread, so the event loop keeps
serving MQTT while a model computes. One thread at a time uses an interpreter: TFLite
interpreters are not thread-safe.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.runtime_output import runtime_output_logged
from protocol.model_meta import TensorSpec

# Engine name -> module providing ``Interpreter``, in order of preference.
RUNTIMES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}
TFLITE_IDENTIFIER = b"TFL3"


class EngineError(Exception):
    """The model cannot be run: no runtime, not a TFLite file, or unsupported tensors."""


def choose_runtime(preference: str, importer: Callable[[str], object]) -> tuple[str, object]:
    """``(engine name, interpreter module)`` for ``preference`` ("auto" tries LiteRT first)."""
    names = list(RUNTIMES) if preference == "auto" else [preference]
    missing = []
    for name in names:
        try:
            return name, importer(RUNTIMES[name])
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    raise EngineError("no TFLite runtime available: " + "; ".join(missing))


def check_tflite(data: bytes) -> None:
    """A FlatBuffer whose file identifier is TFL3, or ``EngineError`` naming what it is not."""
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise EngineError("not a TFLite model (no TFL3 file identifier)")


@dataclass(frozen=True)
class Result:
    """Scores ``[n, classes]`` (float) and per-sample invoke latency in microseconds."""

    scores: np.ndarray
    latency_us: np.ndarray


class Engine:
    """A loaded model with one input and one output tensor, batch dimension 1."""

    def __init__(self, path: Path, preference: str = "auto", threads: int = 1):
        self.runtime, module = choose_runtime(preference, importlib.import_module)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read model {path}: {exc.strerror}") from None
        check_tflite(data)
        try:
            with runtime_output_logged(self.runtime):
                self._interpreter = module.Interpreter(model_content=data, num_threads=threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"model does not load: {exc}") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError("model must have exactly one input and one output tensor")
        self.input, self.output = (
            TensorSpec.from_details(inputs[0]),
            TensorSpec.from_details(outputs[0]),
        )
        if not self.input.shape or self.input.shape[0] != 1:
            raise EngineError(f"input batch dimension must be 1, got shape {self.input.shape}")
        self._in_index, self._out_index = inputs[0]["index"], outputs[0]["index"]
        self.sample_shape = self.input.shape[1:]
        self.classes = int(np.prod(self.output.shape[1:]))

    def infer(self, samples: np.ndarray) -> Result:
        """Run each float sample of ``[n, *sample_shape]`` through the model (blocking)."""
        interpreter, spec = self._interpreter, self.input
        batch = spec.quantize(samples) if spec.quantized else samples.astype(spec.dtype, copy=False)
        raw = np.empty((len(batch), self.classes), dtype=self.output.dtype)
        latency = np.empty(len(batch), dtype=np.int64)
        set_tensor, invoke, get_tensor = (
            interpreter.set_tensor,
            interpreter.invoke,
            interpreter.get_tensor,
        )
        clock = time.perf_counter_ns
        for i in range(len(batch)):
            set_tensor(self._in_index, batch[i : i + 1])
            start = clock()
            invoke()
            latency[i] = clock() - start
            raw[i] = get_tensor(self._out_index).reshape(-1)
        return Result(self.output.dequantize(raw), latency // 1000)

    def close(self) -> None:
        """Free the interpreter now rather than whenever the collector gets to it (a model
        replaced by an update should not hold its memory)."""
        self._interpreter = None
