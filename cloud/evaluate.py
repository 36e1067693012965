"""A candidate model against the incumbent on the labelled samples: both accuracies, the paired
difference, per-class recall changes.

The candidate runs (LiteRT, through ``edgefleet.engine``, which imports only numpy and the
protocol until a model is loaded) on the stored inputs. A sample holds the tensor as the
capturing model took it: float32 for a float model, int8 (quantized with that model's input
scale) for an int8 model. Float inputs go to any model (an int8 model quantizes them with its
own scale); integer inputs go only to a model taking the same dtype, as they are, since the
capturing model's scale is not stored. The incumbent is either a version, whose own outputs on
its samples were recorded (the samples' ``class``), or a second file run the same way on every
labelled sample of the model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from cloud.intervals import mcnemar_p, paired_difference, wilson
from cloud.labels import labels_sql
from cloud.queries import DTYPES, source


class EvaluateError(ValueError):
    """The comparison cannot be made; the message says why and what to give instead."""


@dataclass(frozen=True)
class Request:
    candidate: Path
    model: str | None = None
    against: str | None = None  # a version number, a .tflite file, or None: the newest version


@dataclass(frozen=True)
class Samples:
    ids: list[str]
    versions: np.ndarray
    labels: np.ndarray
    recorded: np.ndarray  # the class the capturing model chose
    inputs: list[tuple[bytes, str, tuple[int, ...]]]

    def where(self, mask: np.ndarray) -> Samples:
        keep = np.flatnonzero(mask).tolist()
        return Samples(
            [self.ids[i] for i in keep],
            self.versions[mask],
            self.labels[mask],
            self.recorded[mask],
            [self.inputs[i] for i in keep],
        )


def labelled_samples(root: Path, model: str | None) -> tuple[str, Samples]:
    """The labelled samples of ``model`` (the only model with some, when ``None``)."""
    if not any(root.glob("stream=*")):
        raise EvaluateError(f"no dataset files under {root}")
    where, values = "stream = 'samples' AND kind = 'sample'", []
    if model is not None:
        where += " AND model = ?"
        values.append(model)
    sql = (
        f"WITH labels AS ({labels_sql(root)}) SELECT s.model, s.dev || ':' || s.boot || ':' || "
        "s.seq AS id, s.version, l.label, s.class, s.input, s.input_dtype, s.input_shape FROM "
        f"(SELECT * FROM {source(root)} WHERE {where} QUALIFY row_number() OVER (PARTITION BY "
        "dev, boot, seq ORDER BY ts_ms) = 1) s JOIN labels l ON l.id = s.dev || ':' || s.boot "
        "|| ':' || s.seq ORDER BY s.dev, s.boot, s.seq"
    )
    rows = duckdb.connect().execute(sql, values).fetchall()
    models = sorted({row[0] for row in rows})
    if not rows:
        scope = f"model {model}" if model else "any model"
        raise EvaluateError(f"no labelled samples of {scope}: import labels first")
    if len(models) > 1:
        raise EvaluateError(f"labelled samples of {len(models)} models ({', '.join(models)}): "
                            "choose one with --model")  # fmt: skip
    return models[0], Samples(
        ids=[row[1] for row in rows],
        versions=np.asarray([row[2] for row in rows], np.int64),
        labels=np.asarray([row[3] for row in rows], np.int64),
        recorded=np.asarray([row[4] for row in rows], np.int64),
        inputs=[(row[5], row[6], tuple(row[7] or ())) for row in rows],
    )


def model_inputs(engine, name: str, inputs: list[tuple[bytes, str, tuple[int, ...]]]):
    """The stored tensors as the floats ``engine.infer`` takes, or one line saying why not."""
    spec, wanted = engine.input, tuple(engine.sample_shape)
    out = np.empty((len(inputs), *wanted), np.float32)
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = defaultdict(list)
    for index, (_, dtype, shape) in enumerate(inputs):
        groups[dtype, shape].append(index)
    for (dtype, shape), rows in groups.items():
        if shape not in (tuple(spec.shape), wanted):
            raise EvaluateError(
                f"{name} takes input {list(spec.shape)}; {len(rows)} samples hold {list(shape)}"
            )
        if dtype != "float32" and dtype != spec.dtype:
            raise EvaluateError(
                f"{name} takes {spec.dtype}; {len(rows)} samples hold {dtype} tensors as their "
                f"capturing model quantized them: evaluate a model that takes {dtype}"
            )
        raw = b"".join(inputs[i][0] for i in rows)
        array = np.frombuffer(raw, np.dtype(DTYPES[dtype])).reshape(len(rows), *wanted)
        # The same dtype as the model's: dequantized with its scale, so that the engine's
        # quantization gives back exactly these integers.
        out[rows] = spec.dequantize(array) if dtype != "float32" else array
    return out


def predict(path: Path, inputs: list[tuple[bytes, str, tuple[int, ...]]]) -> np.ndarray:
    """The top-1 class the model at ``path`` gives each stored input."""
    from edgefleet.engine import Engine, EngineError

    try:
        engine = Engine(path)
    except EngineError as exc:
        raise EvaluateError(f"{path}: {exc}") from None
    try:
        result = engine.infer(model_inputs(engine, path.name, inputs))
    finally:
        engine.close()
    return result.scores.argmax(axis=1)


def _accuracy(correct: np.ndarray) -> dict[str, Any]:
    hits, n = int(correct.sum()), len(correct)
    interval = wilson(hits, n)
    return {"correct": hits, "accuracy": hits / n, "interval": list(interval) if interval else None}


def compare(labels: np.ndarray, candidate: np.ndarray, incumbent: np.ndarray) -> dict[str, Any]:
    """Both accuracies, the paired difference (candidate minus incumbent), recall by class."""
    mine, theirs = candidate == labels, incumbent == labels
    only_mine, only_theirs = int((mine & ~theirs).sum()), int((~mine & theirs).sum())
    difference, interval = paired_difference(only_mine, only_theirs, len(labels))
    classes = []
    for cls in np.unique(labels).tolist():
        rows = labels == cls
        new, old = float(mine[rows].mean()), float(theirs[rows].mean())
        classes.append({"class": cls, "support": int(rows.sum()), "candidate_recall": new,
                        "incumbent_recall": old, "change": new - old})  # fmt: skip
    return {
        "n": len(labels),
        "candidate": _accuracy(mine),
        "incumbent": _accuracy(theirs),
        "difference": {
            "accuracy": difference,
            "interval": list(interval),
            "candidate_only": only_mine,
            "incumbent_only": only_theirs,
            "mcnemar_p": mcnemar_p(only_mine, only_theirs),
        },
        "classes": classes,
    }


def evaluate(root: Path, request: Request) -> dict[str, Any]:
    """Run the candidate (and a file incumbent) on the labelled samples and compare."""
    against = request.against
    if against is not None and not against.isdigit() and not against.endswith(".tflite"):
        raise EvaluateError(f"--against {against}: a version number or a .tflite file")
    model, samples = labelled_samples(root, request.model)
    version = None
    if against is None or against.isdigit():
        version = int(against) if against else int(samples.versions.max())
        held = sorted(set(samples.versions.tolist()))
        samples = samples.where(samples.versions == version)
        if not samples.ids:
            raise EvaluateError(f"no labelled samples of {model} version {version} (labelled "
                                f"samples exist for versions {held})")  # fmt: skip
    candidate = predict(request.candidate, samples.inputs)
    if version is not None:
        incumbent, described = samples.recorded, {"version": version}
    else:
        incumbent = predict(Path(against), samples.inputs)
        described = {"file": against}
    result = compare(samples.labels, candidate, incumbent)
    result["candidate"] = {"file": str(request.candidate), **result["candidate"]}
    result["incumbent"] = {**described, **result["incumbent"]}
    return {"dataset": str(root), "model": model, **result}
