"""Which inputs of one chunk each campaign takes, decided over numpy columns (no I/O).

Only the fields some active trigger reads are computed. The first campaign whose trigger
selects an input takes it; each campaign takes at most what it has left, and all together at
most what the hour has left. Inputs or outputs that are not finite are never taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocol.capture import Campaign, Node, evaluate


@dataclass(frozen=True)
class Armed:
    """A running campaign as the records thread sees it: its trigger and how many it may take."""

    campaign: Campaign
    tree: Node
    left: int


def columns(
    fields: set[str],
    scores: np.ndarray,
    latency_us: np.ndarray,
    drift: bool,
    rng: np.random.Generator,
    shadow_mask: np.ndarray | None = None,
    shadow_scores: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The columns ``fields`` name, one row per input of the chunk."""
    n = len(scores)
    out: dict[str, np.ndarray] = {}
    if fields & {"margin", "confidence"}:
        if scores.shape[1] > 1:
            two = np.partition(scores, -2, axis=1)[:, -2:]
            first, second = two[:, 1], two[:, 0]
        else:
            first, second = scores[:, 0], np.zeros(n, dtype=scores.dtype)
        out["confidence"] = first
        out["margin"] = first - second
    if "class" in fields:
        out["class"] = scores.argmax(axis=1)
    if "latency_ms" in fields:
        out["latency_ms"] = latency_us / 1000
    if "random" in fields:
        out["random"] = rng.random(n)
    if "drift" in fields:
        out["drift"] = np.full(n, drift)
    if "disagree" in fields:
        disagree = np.zeros(n, dtype=bool)
        if shadow_mask is not None and shadow_scores is not None:
            rows = np.flatnonzero(shadow_mask)
            disagree[rows] = scores[rows].argmax(axis=1) != shadow_scores.argmax(axis=1)
        out["disagree"] = disagree
    return {name: out[name] for name in fields}


def select(
    armed: Sequence[Armed],
    cols: dict[str, np.ndarray],
    samples: np.ndarray,
    scores: np.ndarray,
    hour_left: int,
) -> list[tuple[Armed, np.ndarray]]:
    """``(campaign, row indices)`` for each campaign that takes inputs of this chunk."""
    free = np.isfinite(scores).all(axis=1)
    picks = []
    for entry in armed:
        if hour_left <= 0:
            break
        rows = np.flatnonzero(evaluate(entry.tree, cols) & free)
        if len(rows):
            rows = rows[np.isfinite(samples[rows].reshape(len(rows), -1)).all(axis=1)]
        rows = rows[: min(entry.left, hour_left)]
        if len(rows):
            free[rows] = False
            hour_left -= len(rows)
            picks.append((entry, rows))
    return picks
