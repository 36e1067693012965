"""The application's model: the active image's payload run by TFLite Micro in a fixed arena.

Whether a model fits is decided the way the MCU would find out: allocating its tensors in the
configured arena. A model that fails there but allocates in a large arena is TOO_LARGE; one that
fails everywhere is INVALID.
"""

from __future__ import annotations

import time

import numpy as np

from protocol.serial.messages import ModelState

PROBE_ARENA = 16 * 1024 * 1024


def _interpreter(model: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=arena_size)


class ModelRunner:
    def __init__(self, model: bytes | None, arena_size: int, runtime: bool = True) -> None:
        self.arena_size = arena_size
        self._interp = None
        self.state = ModelState.NONE if runtime else ModelState.UNSUPPORTED
        if model is None or not runtime:
            return
        try:
            self._interp = _interpreter(model, arena_size)
            self.state = ModelState.LOADED

        # image from the wire must end as a reported state, never a crash of the MCU.
        except Exception:  # noqa: BLE001
            self.state = ModelState.TOO_LARGE if _loads(model) else ModelState.INVALID

    def infer(self, tensor: bytes) -> tuple[bytes, int]:
        """Run once on raw input bytes (empty: zeros); returns output bytes and microseconds."""
        details = self._interp.get_input_details(0)
        shape, dtype = tuple(details["shape"]), np.dtype(details["dtype"])
        expected = int(np.prod(shape)) * dtype.itemsize
        if not tensor:
            tensor = bytes(expected)
        if len(tensor) != expected:
            raise ValueError(f"input of {len(tensor)} bytes, model takes {expected}")
        self._interp.set_input(np.frombuffer(tensor, dtype=dtype).reshape(shape), 0)
        start = time.perf_counter()
        self._interp.invoke()
        micros = int((time.perf_counter() - start) * 1e6)
        return np.ascontiguousarray(self._interp.get_output(0)).tobytes(), micros


def _loads(model: bytes) -> bool:
    try:
        _interpreter(model, PROBE_ARENA)
    except Exception:  # noqa: BLE001 - as in ModelRunner: any error means it does not load
        return False
    return True
