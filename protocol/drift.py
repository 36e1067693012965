"""Drift statistics both sides agree on: fixed-bin histograms and the population stability index.

The release carries reference histograms made from the reference inputs and the outputs the
model gave on them; the agent fills histograms with the same edges from live traffic and compares
them with PSI. Inputs are summarised per feature (the last tensor axis, averaged over the other
axes, in the dequantized float domain), so a 49x10 spectrogram has 10 features and a greyscale
image has one. Outputs are compared per class score and by top-1 class frequency.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT_VERSION = 1
DEFAULT_BINS = 10
MAX_FEATURES = 32
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class Histogram:
    """Counts over ``len(edges) - 1`` bins; values outside the edges land in the end bins."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        # Floats travel as decimal strings: TUF's canonical JSON, which signs them, has no floats.
        return {"edges": [repr(e) for e in self.edges], "counts": list(self.counts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        edges, counts = (
            tuple(float(e) for e in data["edges"]),
            tuple(int(c) for c in data["counts"]),
        )
        if len(edges) < 2 or len(counts) != len(edges) - 1:
            raise ValueError("histogram needs len(edges) == len(counts) + 1 >= 2")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("histogram edges must increase")
        return cls(edges, counts)


def make_edges(values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """Equal-width edges spanning the reference values (widened when they are all equal),
    each rounded to a hundredth of a bin's width's leading digit: the signed metadata carries
    them as decimals, and ``-0.2059`` signs in a third of the bytes of ``-0.2059478681838634``
    while no edge moves by more than half a percent of its bin."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise ValueError("reference values must be finite")
    if hi - lo < 1e-9 * max(1.0, abs(lo)):
        pad = 0.5 * max(1.0, abs(lo) * 1e-6)
        lo, hi = lo - pad, hi + pad
    edges = tuple(float(e) for e in np.linspace(lo, hi, bins + 1))
    width = (hi - lo) / bins
    if not math.isfinite(width):
        return edges
    digits = 2 - math.floor(math.log10(width))
    return tuple(round(e, digits) for e in edges)


def bin_counts(values: npt.ArrayLike, edges: Sequence[float]) -> npt.NDArray[np.intp]:
    """Counts per bin; out-of-range values are clipped into the first or last bin."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    index = np.searchsorted(inner, np.asarray(values, dtype=np.float64).ravel(), side="right")
    return np.bincount(index, minlength=len(edges) - 1)


def psi(
    reference: Sequence[int] | npt.NDArray[np.integer[Any]],
    live: Sequence[int] | npt.NDArray[np.integer[Any]],
) -> float:
    """Population stability index of ``live`` against ``reference`` (same bins)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError("histograms have different bins")
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    p = np.maximum(ref / ref.sum(), PSI_EPSILON)
    q = np.maximum(cur / cur.sum(), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def feature_summary(batch: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``[N, ...]`` float inputs -> ``[N, F]``: each feature's mean over the non-feature axes."""
    values = np.asarray(batch, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    per_feature: npt.NDArray[np.float64] = values.reshape(
        values.shape[0], -1, values.shape[-1]
    ).mean(axis=1)
    if per_feature.shape[1] <= MAX_FEATURES:
        return per_feature
    groups = np.array_split(np.arange(per_feature.shape[1]), MAX_FEATURES)
    return np.stack([per_feature[:, g].mean(axis=1) for g in groups], axis=1)


@dataclass(frozen=True)
class DriftReference:
    """What a release signs about its expected data: one histogram per input feature and per
    output class, and how often each class wins."""

    inputs: tuple[Histogram, ...]
    outputs: tuple[Histogram, ...]
    top1: tuple[int, ...]

    @classmethod
    def build(
        cls, inputs: npt.ArrayLike, outputs: npt.ArrayLike, bins: int = DEFAULT_BINS
    ) -> DriftReference:
        """From float inputs ``[N, ...]`` and float outputs ``[N, ...]`` (last axis = classes)."""
        features = feature_summary(inputs)
        scores = np.asarray(outputs, dtype=np.float64)
        scores = scores.reshape(len(scores), -1)

        def columns(matrix: npt.NDArray[np.float64]) -> tuple[Histogram, ...]:
            result = []
            for column in matrix.T:
                edges = make_edges(column, bins)
                result.append(Histogram(edges, tuple(int(c) for c in bin_counts(column, edges))))
            return tuple(result)

        top1 = np.bincount(scores.argmax(axis=1), minlength=scores.shape[1])
        return cls(columns(features), columns(scores), tuple(int(c) for c in top1))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "inputs": [h.to_json() for h in self.inputs],
            "outputs": [h.to_json() for h in self.outputs],
            "top1": list(self.top1),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriftReference:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported drift reference format {data.get('format')!r}")
        return cls(
            tuple(Histogram.from_json(h) for h in data["inputs"]),
            tuple(Histogram.from_json(h) for h in data["outputs"]),
            tuple(int(c) for c in data["top1"]),
        )
