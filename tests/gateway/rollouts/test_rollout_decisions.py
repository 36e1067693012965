"""Rollout decisions as pure functions: cohorts, eligibility, advance, soak, pause."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.rollouts.decisions import (
    Action,
    DeviceFacts,
    DeviceState,
    Plan,
    Progress,
    assign_stages,
    decide,
    eligibility,
    stage_table,
)

PLAN = Plan("r1", "kws", 2, (1, 10, 50, 100), soak_s=60, max_failure_rate=0.05)


@given(st.sets(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), min_size=1, max_size=300))
def test_stages_are_deterministic_cumulative_and_cover_everyone(devices):
    stages = assign_stages(PLAN, devices)
    assert set(stages) == set(devices)
    assert stages == assign_stages(PLAN, sorted(devices, reverse=True))
    n = len(devices)
    for index, percent in enumerate(PLAN.stages):
        upto = sum(1 for s in stages.values() if s <= index)
        assert upto >= min(n, index + 1) and upto >= min(n, -(-n * percent // 100))


def test_a_canary_stage_of_twenty_devices_is_one_device():
    stages = assign_stages(PLAN, [f"dev{i}" for i in range(20)])
    assert sorted(stages.values()).count(0) == 1
    assert sum(1 for s in stages.values() if s <= 1) == 2


def progress(states, stage=0, committed_at=0.0):
    return [
        Progress(f"d{i}", stage, s, committed_at if s == DeviceState.COMMITTED else None)
        for i, s in enumerate(states)
    ]


def test_wait_then_soak_then_advance():
    offered = progress([DeviceState.COMMITTED, DeviceState.OFFERED])
    assert decide(PLAN, 0, offered, now=100).action == Action.WAIT
    done = progress([DeviceState.COMMITTED] * 2, committed_at=100)
    assert decide(PLAN, 0, done, now=130).action == Action.WAIT
    assert decide(PLAN, 0, done, now=161).action == Action.ADVANCE
    assert decide(PLAN, 3, done, now=161).action == Action.COMPLETE


def test_a_failing_canary_pauses_and_names_devices_to_roll_back():
    plan = Plan("r1", "kws", 2, (10, 100), 0, 0.05, auto_rollback=True)
    states = progress([DeviceState.FAILED, DeviceState.COMMITTED, DeviceState.OFFERED])
    decision = decide(plan, 0, [*states, Progress("later", 1, DeviceState.PENDING)], now=0)
    assert decision.action == Action.PAUSE
    assert decision.failure_rate == pytest.approx(1 / 3)
    assert set(decision.rollback) == {"d0", "d1", "d2"}
    assert decide(PLAN, 0, states, now=0).rollback == ()


def test_eligibility_by_hardware_tags_and_arena():

    class Meta:
        hardware_tags = ("npu",)
        arena_bytes = 40_000

    assert eligibility(DeviceFacts("a", frozenset({"npu"}), 50_000), Meta) is None
    assert "hardware" in eligibility(DeviceFacts("b", frozenset(), 50_000), Meta)
    assert "arena" in eligibility(DeviceFacts("c", frozenset({"npu"}), 10_000), Meta)


@pytest.mark.parametrize("stages", [(), (50,), (10, 5, 100), (0, 100), (10, 10, 100)])
def test_bad_plans_are_refused(stages):
    with pytest.raises(ValueError):
        Plan("r", "m", 1, stages, 0, 0.1)


def test_stage_table_counts():
    rows = stage_table(PLAN, progress([DeviceState.COMMITTED, DeviceState.FAILED]))
    assert rows[0] | {} == {
        "stage": 0,
        "percent": 1,
        "devices": 2,
        "pending": 0,
        "offered": 0,
        "committed": 1,
        "failed": 1,
        "blocked": 0,
    }
