"""The simulator as the team that labels and evaluates: it knows the class every banded input
was made from (``edgefleet.models.bands.truth``), so it can label the samples in the cloud's
dataset the way people would, through ``edgefleet cloud label import``'s own code, and run
``edgefleet cloud evaluate`` on them."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from cloud import evaluate, quality
from cloud.labels import import_labels
from cloud.queries import source
from edgefleet.models import bands
from protocol.telemetry import RAW_ITEMSIZE

LABELLER = "simulator"


def truth(data: bytes, dtype: str) -> int:
    """The class a captured input was made from. An int8 input is an affine map of the float
    one with a positive scale, so its brightest band is the same."""
    values = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float32)
    return int(bands.truth(values.reshape(1, *bands.SHAPE))[0])


def label_samples(root: Path, done: dict[str, int], fraction: float, rng: random.Random,
                  workdir: Path) -> int:  # fmt: skip
    """Label ``fraction`` of the samples not labelled yet; ``done`` gains id -> label."""
    if not any(root.glob("stream=samples")):
        return 0
    rows = duckdb.sql(
        f"SELECT DISTINCT ON (dev, boot, seq) dev || ':' || boot || ':' || seq, input, "
        f"input_dtype FROM {source(root)} WHERE stream = 'samples' AND input IS NOT NULL"
    ).fetchall()
    fresh = sorted((i, d, t) for i, d, t in rows if i not in done and t in RAW_ITEMSIZE)
    chosen = [row for row in fresh if rng.random() < fraction]
    if not chosen:
        return 0
    path = workdir / f"labels-{len(done)}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        for record_id, data, dtype in chosen:
            done[record_id] = truth(data, dtype)
            writer.writerow([record_id, done[record_id]])
    import_labels(root, path, LABELLER)
    return len(chosen)


def evaluation_set(root: Path, labelled: dict[str, int], path: Path) -> int:
    """The samples labelled so far as a release's evaluation set (``inputs``, ``labels``);
    returns how many."""
    if not labelled:
        return 0
    rows = duckdb.sql(
        f"SELECT DISTINCT ON (dev, boot, seq) dev || ':' || boot || ':' || seq, input, "
        f"input_dtype FROM {source(root)} WHERE stream = 'samples' AND input_dtype = 'float32'"
    ).fetchall()
    chosen = sorted((i, d) for i, d, _ in rows if i in labelled)
    inputs = np.stack([np.frombuffer(d, "<f4").reshape(bands.SHAPE) for _, d in chosen])
    labels = np.array([labelled[i] for i, _ in chosen], dtype=np.int64)
    np.savez(path, inputs=inputs, labels=labels)
    return len(chosen)


def run_evaluation(root: Path, model: str, candidate: Path, against: int | None) -> dict:
    request = evaluate.Request(candidate, model, str(against) if against else None)
    return evaluate.evaluate(root, request)


def accuracy_by_phase(root: Path, model: str) -> list[dict[str, Any]]:
    """Accuracy of each model version on each campaign's labelled samples (each campaign a
    phase of the loop), as ``edgefleet cloud quality --by version-campaign`` says it."""
    if not any(root.glob("stream=*")):
        return []
    answer = quality.measure(root, quality.Question("version-campaign", model))
    out = []
    for group in answer["groups"]:
        version, campaign = group["version-campaign"].split("/", 1)
        out.append({
            "version": int(version), "campaign": campaign, "n": group["n"],
            "accuracy": round(group["accuracy"], 4), "interval": group["interval"],
        })  # fmt: skip
    return out
