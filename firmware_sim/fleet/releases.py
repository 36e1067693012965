"""What the operator signs for a simulated fleet: models as given, or deliberately bad ones that
the real gate or the real probation on the devices must catch.

* ``fail-gate``: the model is fine but its signed reference outputs are reversed, so the health
  gate on the device sees outputs that disagree with what was signed.
* ``fail-probation``: the classifier head is replaced so the model predicts one class for every
  input; its gate vectors are its own, so it passes the gate and only probation (agreement with
  the incumbent in shadow) can catch it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from gateway.releases.model_inspect import ReleaseOptions, build_model_meta
from gateway.releases.repository import Release, Repository
from protocol.gate_vectors import signed_gate_ref

QUICK = ReleaseOptions(samples=16, gate_samples=4)


class BadModelError(ValueError):
    """The model cannot be turned into the requested bad model."""


def sign_model(
    repo: Repository,
    data: bytes,
    name: str,
    version: int,
    options: ReleaseOptions = QUICK,
    described: bytes | None = None,
    edit_outputs: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Release:
    """Sign ``data`` as ``name`` ``version``. ``described``: sign another model's description
    (signature, reference outputs) instead; ``edit_outputs``: change the reference outputs
    before they are hashed and signed."""
    inspected = build_model_meta(described or data, name, version, options)
    meta, gate = inspected.meta, inspected.gate
    if edit_outputs is not None:
        gate = gate.with_outputs(tuple(edit_outputs(o) for o in gate.vectors.outputs))
        meta = replace(meta, gate=signed_gate_ref(meta.gate, gate))
    return repo.add_release(meta, data, gate, eval_bytes=inspected.eval_bytes)


def reversed_outputs(outputs: np.ndarray) -> np.ndarray:
    return outputs[..., ::-1].copy()


def sign_scenario_release(
    repo: Repository,
    data: bytes,
    name: str,
    version: int,
    gate: str | None,
    options: ReleaseOptions = QUICK,
) -> Release:
    """``gate``: None or "pass" signs ``data`` as it is; "fail-gate" / "fail-probation" as above."""
    if gate == "fail-gate":
        return sign_model(repo, data, name, version, options, edit_outputs=reversed_outputs)
    if gate == "fail-probation":
        return sign_model(repo, one_class(data), name, version, options)
    return sign_model(repo, data, name, version, options)


def one_class(data: bytes) -> bytes:
    """The float model with its classifier head replaced: zero weights and a bias that favours
    one class, so it predicts that class for every input. Edited in the flatbuffer's constant
    buffers (found by their exact bytes), so no TensorFlow is needed."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    output = interpreter.get_output_details()[0]
    classes = int(output["shape"][-1])
    edited = bytearray(data)
    found = {"bias": 0, "weights": 0}
    for detail in interpreter.get_tensor_details():
        shape = tuple(detail["shape"])
        if detail["dtype"] != np.float32 or not shape or shape[0] != classes:
            continue
        try:
            values = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        raw = values.astype("<f4").tobytes()
        if edited.count(raw) != 1 or not raw.strip(b"\0"):
            continue
        at = edited.index(raw)
        if len(shape) == 1:
            bias = np.full(classes, -10.0, dtype="<f4")
            bias[classes // 2] = 10.0
            edited[at : at + len(raw)] = bias.tobytes()
            found["bias"] += 1
        elif len(shape) == 2:
            edited[at : at + len(raw)] = bytes(len(raw))
            found["weights"] += 1
    if found != {"bias": 1, "weights": 1}:
        raise BadModelError(
            "fail-probation needs a float32 model whose last layer is a dense classifier "
            f"(found {found['weights']} weight and {found['bias']} bias tensors to replace)"
        )
    return bytes(edited)
