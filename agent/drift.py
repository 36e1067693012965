"""Live drift statistics: fixed-bin histograms of every input feature and output class over
tumbling windows, compared with the release's reference histograms by PSI.

The bins are the reference's. Without a reference (no model metadata configured) the first
window fixes equal-width bins from its own data and windows are only counted, never compared.
``evaluate`` is the whole decision and is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from protocol.drift import DriftReference, bin_counts, make_edges, psi


@dataclass(frozen=True)
class DriftVerdict:
    window: int
    compared: bool
    alarm: bool
    max_psi: float
    inputs_psi: tuple[float, ...]
    outputs_psi: tuple[float, ...]
    top1_psi: float
    inputs: tuple[tuple[int, ...], ...]
    outputs: tuple[tuple[int, ...], ...]
    top1: tuple[int, ...]


def evaluate(
    reference: DriftReference | None,
    inputs: list[np.ndarray],
    outputs: list[np.ndarray],
    top1: np.ndarray,
    threshold: float,
) -> DriftVerdict:
    """PSI of each live histogram against its reference; alarm when any exceeds ``threshold``."""
    window = int(top1.sum())
    as_tuples = (
        tuple(tuple(int(c) for c in h) for h in inputs),
        tuple(tuple(int(c) for c in h) for h in outputs),
        tuple(int(c) for c in top1),
    )
    if reference is None:
        return DriftVerdict(window, False, False, 0.0, (), (), 0.0, *as_tuples)
    inputs_psi = tuple(psi(r.counts, h) for r, h in zip(reference.inputs, inputs, strict=True))
    outputs_psi = tuple(psi(r.counts, h) for r, h in zip(reference.outputs, outputs, strict=True))
    top1_psi = psi(reference.top1, top1)
    worst = max((*inputs_psi, *outputs_psi, top1_psi), default=0.0)
    return DriftVerdict(
        window, True, worst > threshold, worst, inputs_psi, outputs_psi, top1_psi, *as_tuples
    )


def compatible(reference: DriftReference, features: int, classes: int) -> bool:
    return (
        len(reference.inputs) == features
        and len(reference.outputs) == classes
        and len(reference.top1) == classes
    )


class LiveDrift:
    """Accumulates ``[n, F]`` feature summaries and ``[n, C]`` scores; returns a ``DriftVerdict``
    each time a window of ``window`` samples completes."""

    def __init__(
        self,
        reference: DriftReference | None,
        features: int,
        classes: int,
        window: int,
        threshold: float,
        bins: int,
    ):
        self.reference = reference
        self.window, self.threshold, self.bins = window, threshold, bins
        self.classes = classes
        self._in_edges: list[tuple[float, ...]] | None = None
        self._out_edges: list[tuple[float, ...]] | None = None
        if reference is not None:
            self._in_edges = [h.edges for h in reference.inputs]
            self._out_edges = [h.edges for h in reference.outputs]
        self._held: list[tuple[np.ndarray, np.ndarray]] = []
        self._reset(features)
        self.last: DriftVerdict | None = None

    def _reset(self, features: int) -> None:
        edges_in = self._in_edges or [()] * features
        edges_out = self._out_edges or [()] * self.classes
        self._inputs = [np.zeros(max(len(e) - 1, 0), np.int64) for e in edges_in]
        self._outputs = [np.zeros(max(len(e) - 1, 0), np.int64) for e in edges_out]
        self._top1 = np.zeros(self.classes, np.int64)
        self._count = 0

    def update(self, features: np.ndarray, scores: np.ndarray) -> list[DriftVerdict]:
        verdicts = []
        while len(features):
            take = min(self.window - self._count, len(features))
            self._add(features[:take], scores[:take])
            features, scores = features[take:], scores[take:]
            if self._count == self.window:
                verdicts.append(self._close())
        return verdicts

    def _add(self, features: np.ndarray, scores: np.ndarray) -> None:
        self._count += len(features)
        self._top1 += np.bincount(scores.argmax(axis=1), minlength=self.classes)
        if self._in_edges is None:
            self._held.append((features, scores))
            return
        for column, edges, counts in zip(features.T, self._in_edges, self._inputs, strict=True):
            counts += bin_counts(column, edges)
        for column, edges, counts in zip(scores.T, self._out_edges, self._outputs, strict=True):
            counts += bin_counts(column, edges)

    def close(self) -> DriftVerdict | None:
        """End the window early (the model it measures is about to change): the verdict over
        what it holds, or None when it holds nothing. Fewer than half a window of inputs make a
        PSI of noise, so such a window is recorded but not compared."""
        if self._count == 0:
            return None
        verdict = self._close()
        if verdict.compared and verdict.window < self.window // 2:
            verdict = replace(verdict, compared=False, alarm=False)
            self.last = verdict
        return verdict

    def _close(self) -> DriftVerdict:
        if self._in_edges is None:
            features = np.concatenate([f for f, _ in self._held])
            scores = np.concatenate([s for _, s in self._held])
            self._held.clear()
            self._in_edges = [make_edges(c, self.bins) for c in features.T]
            self._out_edges = [make_edges(c, self.bins) for c in scores.T]
            self._inputs = [
                bin_counts(c, e) for c, e in zip(features.T, self._in_edges, strict=True)
            ]
            self._outputs = [
                bin_counts(c, e) for c, e in zip(scores.T, self._out_edges, strict=True)
            ]
        verdict = evaluate(self.reference, self._inputs, self._outputs, self._top1, self.threshold)
        self._reset(len(self._inputs))
        self.last = verdict
        return verdict
