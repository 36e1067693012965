"""Probation: the new model is judged against the incumbent on the same live inputs.

Outputs recorded at release time cannot vouch for a model on the data this device sees, so
during the trial the agent keeps the previous model loaded and runs it in shadow on a sample of
inputs. ``judge`` is the decision, a pure function of what was counted: the trial fails when the
two models agree too rarely on the top class, when their top-class distributions differ (PSI),
when the candidate errs too often, or when its latency p95 grows past the limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from protocol.drift import psi


class Outcome(StrEnum):
    CONTINUE = "continue"
    COMMIT = "commit"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class ProbationLimits:
    min_samples: int = 200  # shadowed inputs (and inputs overall) before any verdict
    window_s: float = 600.0  # the trial lasts at least this long before a commit
    shadow_every: int = 4  # run the incumbent on one input in this many
    min_agreement: float = 0.9  # top class equal to the incumbent's
    max_psi: float = 0.25  # between the two models' top-class distributions
    max_error_rate: float = 0.02
    max_latency_p95_ms: float = 1000.0
    max_latency_p95_ratio: float = 2.0  # candidate p95 / incumbent p95
    latency_floor_ms: float = 1.0  # a p95 below this is never held against a model (noise)
    max_latency_samples: int = 4096  # latencies kept per model (the most recent)
    max_trial_boots: int = 3  # agent starts in TRIAL before a rollback


@dataclass
class Counts:
    """What a trial has seen so far."""

    classes: int
    started_s: float
    inputs: int = 0
    errors: int = 0
    shadowed: int = 0
    agreed: int = 0
    candidate_top1: npt.NDArray[np.int64] = field(init=False)
    incumbent_top1: npt.NDArray[np.int64] = field(init=False)
    candidate_latency_ms: list[float] = field(default_factory=list)
    incumbent_latency_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.candidate_top1 = np.zeros(self.classes, dtype=np.int64)
        self.incumbent_top1 = np.zeros(self.classes, dtype=np.int64)


@dataclass(frozen=True)
class Observation:
    """Candidate results on ``inputs`` live inputs; the incumbent's on the same inputs when
    they were shadowed (``incumbent_scores`` None otherwise); ``errors``: inputs on which the
    candidate failed (they have no scores)."""

    candidate_scores: np.ndarray
    candidate_latency_ms: tuple[float, ...]
    incumbent_scores: np.ndarray | None = None
    incumbent_latency_ms: tuple[float, ...] = ()
    errors: int = 0

    @property
    def inputs(self) -> int:
        return len(self.candidate_scores)


def record(counts: Counts, limits: ProbationLimits, observation: Observation) -> None:
    """Add one batch of live results to ``counts``."""
    counts.inputs += observation.inputs
    counts.errors += observation.errors
    _keep(counts.candidate_latency_ms, observation.candidate_latency_ms, limits)
    if observation.incumbent_scores is None:
        return
    candidate = np.asarray(observation.candidate_scores).reshape(observation.inputs, -1)
    incumbent = np.asarray(observation.incumbent_scores).reshape(len(candidate), -1)
    ours, theirs = candidate.argmax(axis=1), incumbent.argmax(axis=1)
    counts.shadowed += len(ours)
    counts.agreed += int((ours == theirs).sum())
    counts.candidate_top1 += np.bincount(ours, minlength=counts.classes)[: counts.classes]
    counts.incumbent_top1 += np.bincount(theirs, minlength=counts.classes)[: counts.classes]
    _keep(counts.incumbent_latency_ms, observation.incumbent_latency_ms, limits)


def _keep(kept: list[float], new: Iterable[float], limits: ProbationLimits) -> None:
    kept.extend(float(v) for v in new)
    del kept[: max(0, len(kept) - limits.max_latency_samples)]


@dataclass(frozen=True)
class ProbationVerdict:
    decision: Outcome
    reasons: tuple[str, ...] = ()
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons) or self.decision.value


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


def judge(counts: Counts, limits: ProbationLimits, now_s: float) -> ProbationVerdict:
    """Roll back as soon as enough evidence shows a problem; commit once the window has passed
    with enough evidence and none; otherwise keep watching."""
    if counts.shadowed < limits.min_samples or counts.inputs < limits.min_samples:
        return ProbationVerdict(Outcome.CONTINUE)
    agreement = counts.agreed / counts.shadowed
    drift = psi(counts.incumbent_top1, counts.candidate_top1)
    error_rate = counts.errors / (counts.inputs + counts.errors)
    p95, incumbent_p95 = _p95(counts.candidate_latency_ms), _p95(counts.incumbent_latency_ms)
    measures = {"agreement": agreement, "psi": drift, "error_rate": error_rate}
    reasons = []
    if agreement < limits.min_agreement:
        reasons.append(f"agrees with the incumbent on {agreement:.1%} of inputs")
    if drift > limits.max_psi:
        reasons.append(f"top-class PSI against the incumbent is {drift:.2f}")
    if error_rate > limits.max_error_rate:
        reasons.append(f"error rate {error_rate:.1%}")
    if p95 is not None and p95 > limits.latency_floor_ms:
        measures["latency_p95_ms"] = p95
        if p95 > limits.max_latency_p95_ms:
            reasons.append(f"latency p95 {p95:.2f} ms")
        elif incumbent_p95 and p95 > limits.max_latency_p95_ratio * incumbent_p95:
            reasons.append(f"latency p95 {p95:.2f} ms against the incumbent's {incumbent_p95:.2f}")
    if reasons:
        return ProbationVerdict(Outcome.ROLLBACK, tuple(reasons), measures)
    if now_s - counts.started_s < limits.window_s:
        return ProbationVerdict(Outcome.CONTINUE, (), measures)
    return ProbationVerdict(Outcome.COMMIT, (), measures)
