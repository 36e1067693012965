"""The labelled evaluation set a release may carry, and the accuracy floor it is signed with.

The operator gives a ``.npz`` of ``inputs`` ``[N, *input shape]`` (float32 in the model's
real-valued input space, or already in the input tensor's dtype) and ``labels`` ``[N]`` (class
indices), or a folder holding ``eval.npz``. The release runs the model on it; below the
minimum it is not signed (unless the operator asks, for experiments, and then the metadata says
it did not pass). The set travels as its own target, inputs stored as the model takes them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.releases.errors import ReleaseError
from protocol.model_meta import MAX_EVAL_SAMPLES, MAX_EVAL_VALUES, EvalRef, EvalSet, TensorSpec
from protocol.model_meta import eval_path as target_path

FOLDER_FILE = "eval.npz"
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Measured:
    """How the model did on the set."""

    correct: int
    count: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.count

    def interval(self) -> tuple[float, float]:
        """Wilson score interval (95 %) of the accuracy: unlike the normal approximation it
        stays within [0, 1] and is honest for small sets and accuracies near 1."""
        n, p, z2 = self.count, self.accuracy, Z_95**2
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z_95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        return max(0.0, centre - half), min(1.0, centre + half)

    def describe(self, minimum: float) -> str:
        low, high = self.interval()
        return (
            f"accuracy {self.accuracy:.3f} (95 % interval {low:.3f} to {high:.3f}, "
            f"n={self.count}), minimum {minimum:g}"
        )


def read_eval_set(path: Path, spec: TensorSpec, classes: int) -> EvalSet:
    """The operator's set as the model's input tensor takes it, or a one-line refusal."""
    source = path / FOLDER_FILE if path.is_dir() else path
    try:
        with np.load(source, allow_pickle=False) as archive:
            if not {"inputs", "labels"} <= set(archive.files):
                raise ReleaseError(
                    f"{source}: an evaluation set needs arrays 'inputs' and 'labels' "
                    f"(has {', '.join(archive.files) or 'none'})"
                )
            inputs, labels = archive["inputs"], archive["labels"]
    except FileNotFoundError:
        raise ReleaseError(f"{source}: no such evaluation set") from None
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{source}: not an evaluation set (.npz): {exc}") from None
    count = len(labels) if labels.ndim == 1 else -1
    if not 1 <= count <= MAX_EVAL_SAMPLES:
        raise ReleaseError(
            f"{source}: labels must be [N] with N from 1 to {MAX_EVAL_SAMPLES}, "
            f"not {list(labels.shape)}"
        )
    if inputs.shape[1:] == spec.shape[1:] and spec.shape[:1] == (1,):
        inputs = inputs.reshape(len(inputs), *spec.shape)
    if inputs.shape != (count, *spec.shape):
        raise ReleaseError(
            f"{source}: inputs have shape {list(inputs.shape)}, expected "
            f"[{count}, *{list(spec.shape)}] (one per label)"
        )
    if inputs.size > MAX_EVAL_VALUES:
        raise ReleaseError(f"{source}: more than {MAX_EVAL_VALUES} input values")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes:
        raise ReleaseError(f"{source}: labels must be class indices from 0 to {classes - 1}")
    floating = np.issubdtype(inputs.dtype, np.floating)
    if floating and not np.isfinite(inputs).all():
        raise ReleaseError(f"{source}: inputs hold values that are not finite")
    if inputs.dtype != np.dtype(spec.dtype):
        if not floating:
            raise ReleaseError(
                f"{source}: inputs are {inputs.dtype}: give float32 values or the model's "
                f"input dtype {spec.dtype}"
            )
        inputs = spec.quantize(inputs)
    return EvalSet(inputs, labels.astype(np.min_scalar_type(classes - 1)))


def judge(
    measured: Measured,
    minimum: float,
    name: str,
    version: int,
    data: bytes,
    sign_below_minimum: bool,
) -> tuple[EvalRef, tuple[str, ...]]:
    """The signed entry for a set of ``data`` bytes, and warnings; below the minimum a
    refusal, unless the operator signs it below the minimum on purpose."""
    passed = measured.accuracy >= minimum
    line = f"{name}/{version}: {measured.describe(minimum)}"
    if not passed and not sign_below_minimum:
        raise ReleaseError(
            f"{line}: below the minimum, not signed (--sign-below-minimum signs it for "
            "experiments; rollouts of it are refused)"
        )
    ref = EvalRef(
        path=target_path(name, version),
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        count=measured.count,
        min_accuracy=minimum,
        accuracy=measured.accuracy,
        passed=passed,
    )
    warnings = () if passed else (f"{line}: signed below the minimum; rollouts are refused",)
    return ref, warnings
