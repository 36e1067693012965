"""Staged rollouts, decided as pure functions over the devices' reported progress.

A rollout offers one model version to growing cohorts (e.g. 1%, 10%, 50%, 100% of eligible
devices). Cohorts come from a hash of (rollout id, device id), so the same devices form the
canary however often the controller restarts. A stage advances when all its devices have
committed and soaked; a stage whose failure rate passes the threshold pauses the rollout, and
with auto-rollback its devices are commanded back.

Only verdicts about the model count as failures (health gate, probation, a crash loop in
trial, hardware that does not fit). A device that cannot fetch or verify the update (the
repository unreachable, metadata stale or expired, a corrupted delta) reports itself blocked
and keeps trying; it counts as failed only once it has been blocked for longer than the plan's
``blocked_deadline_s``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from protocol.model_meta import ModelMeta

MAX_BLOCKED_DEADLINE_S = 7 * 86400


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class DeviceState(StrEnum):
    PENDING = "pending"  # in a later stage
    OFFERED = "offered"  # command sent, no verdict yet
    BLOCKED = "blocked"  # cannot fetch or verify the update yet; retrying
    COMMITTED = "committed"
    FAILED = "failed"  # rolled back, refused the update, or reported an error


class Action(StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    PAUSE = "pause"
    COMPLETE = "complete"


@dataclass(frozen=True)
class Plan:
    rollout_id: str
    model: str
    version: int
    stages: tuple[int, ...]  # cumulative percentages, increasing, ending at 100
    soak_s: float
    max_failure_rate: float
    auto_rollback: bool = False
    blocked_deadline_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.stages or any(not 0 < s <= 100 for s in self.stages):
            raise ValueError("stages are percentages in 1..100")
        if list(self.stages) != sorted(set(self.stages)) or self.stages[-1] != 100:
            raise ValueError("stages must increase and end at 100")
        if not 0 <= self.max_failure_rate <= 1:
            raise ValueError("max failure rate is a fraction in 0..1")
        if self.soak_s < 0:
            raise ValueError("soak must not be negative")
        if not 0 < self.blocked_deadline_s <= MAX_BLOCKED_DEADLINE_S:
            raise ValueError("the blocked deadline must be from 1 s to 7 days")


@dataclass(frozen=True)
class DeviceFacts:
    """What the inventory knows that decides eligibility."""

    device: str
    hardware_tags: frozenset[str] = frozenset()
    arena_bytes: int | None = None


@dataclass(frozen=True)
class Progress:
    device: str
    stage: int
    state: DeviceState
    committed_at: float | None = None
    offered_at: float | None = None  # the first offer
    detail: str = ""  # why it failed or is blocked
    blocked_since: float | None = None
    reoffered_at: float | None = None  # the last offer sent again, if any

    @property
    def last_offered_at(self) -> float | None:
        return self.reoffered_at or self.offered_at


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    failure_rate: float = 0.0
    rollback: tuple[str, ...] = field(default_factory=tuple)


def cohort_rank(rollout_id: str, device: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{rollout_id}\0{device}".encode()).digest()[:8], "big")


def eligibility(facts: DeviceFacts, meta: ModelMeta) -> str | None:
    """None when the model fits the device, else why not."""
    missing = set(meta.hardware_tags) - facts.hardware_tags
    if missing:
        return f"lacks hardware tags {sorted(missing)}"
    if meta.arena_bytes and facts.arena_bytes is not None and facts.arena_bytes < meta.arena_bytes:
        return f"arena {facts.arena_bytes} < {meta.arena_bytes} bytes"
    return None


def assign_stages(plan: Plan, devices: Iterable[str]) -> dict[str, int]:
    """Stage index per device: the first ``ceil(p% of n)`` devices by rank are in stage 0, and
    so on; every stage holds at least one device more than the one before when it can."""
    ranked = sorted(devices, key=lambda d: cohort_rank(plan.rollout_id, d))
    stages: dict[str, int] = {}
    start = 0
    for index, percent in enumerate(plan.stages):
        end = max(start + 1, math.ceil(len(ranked) * percent / 100))
        for device in ranked[start:end]:
            stages[device] = index
        start = min(end, len(ranked))
    return stages


def overdue(plan: Plan, progress: Sequence[Progress], now: float) -> list[Progress]:
    """Blocked devices that have waited past the plan's deadline: they now count as failed."""
    return [
        p
        for p in progress
        if p.state == DeviceState.BLOCKED
        and p.blocked_since is not None
        and now - p.blocked_since > plan.blocked_deadline_s
    ]


def decide(plan: Plan, stage: int, progress: Sequence[Progress], now: float) -> Decision:
    """What the controller does next for the current ``stage``."""
    current = [p for p in progress if p.stage <= stage]
    if not current:
        return Decision(
            Action.COMPLETE if stage >= len(plan.stages) - 1 else Action.ADVANCE,
            "no devices in this stage",
        )
    failed = [p for p in current if p.state == DeviceState.FAILED]
    rate = len(failed) / len(current)
    if rate > plan.max_failure_rate:
        rollback = (
            tuple(p.device for p in current if p.state != DeviceState.PENDING)
            if plan.auto_rollback
            else ()
        )
        return Decision(
            Action.PAUSE, f"failure rate {rate:.0%} > {plan.max_failure_rate:.0%}", rate, rollback
        )
    waiting = [p for p in current if p.state in (DeviceState.OFFERED, DeviceState.BLOCKED)]
    if waiting:
        blocked = sum(p.state == DeviceState.BLOCKED for p in waiting)
        held = f" ({blocked} blocked)" if blocked else ""
        return Decision(Action.WAIT, f"{len(waiting)} devices still updating{held}", rate)
    soaking = [
        p
        for p in current
        if p.state == DeviceState.COMMITTED and (p.committed_at or 0) + plan.soak_s > now
    ]
    if soaking:
        return Decision(Action.WAIT, f"{len(soaking)} devices soaking", rate)
    if stage >= len(plan.stages) - 1:
        return Decision(Action.COMPLETE, "every stage committed and soaked", rate)
    return Decision(Action.ADVANCE, f"stage {stage + 1} committed and soaked", rate)


def stage_table(plan: Plan, progress: Sequence[Progress]) -> list[dict]:
    """Per-stage counts for ``rollout status``."""
    rows = []
    for index, percent in enumerate(plan.stages):
        members = [p for p in progress if p.stage == index]
        counts: Mapping[DeviceState, int] = {
            state: sum(p.state == state for p in members) for state in DeviceState
        }
        rows.append(
            {
                "stage": index,
                "percent": percent,
                "devices": len(members),
                **{state.value: counts[state] for state in DeviceState},
            }
        )
    return rows
