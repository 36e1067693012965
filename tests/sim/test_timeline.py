"""The rollout timeline of the simulator's report: phases are cut at the device's events and the
stages follow one another."""

from __future__ import annotations

import pytest

from firmware_sim.fleet.timeline import rollout_timeline, rollout_wall_s
from protocol.topics import Event

KINDS = ("update_offered", "update_downloaded", "update_installed", "update_trial",
         "update_committed")  # fmt: skip


def view(progress: list[dict]) -> dict:
    return {"id": "r1", "created_at": 100.0, "plan": {"stages": [50, 100]}, "progress": progress}


def device(name: str, stage: int, offered: float | None, committed: float | None) -> dict:
    return {"device": name, "stage": stage, "offered_at": offered, "committed_at": committed}


def events(name: str, times: list[float], rollout: str = "r1") -> list[Event]:
    return [
        Event(name, round(t * 1000), kind, {"rollout": rollout})
        for kind, t in zip(KINDS, times, strict=False)
    ]


def test_phases_are_cut_at_the_devices_events_and_stages_add_up():
    progress = [device("a", 0, 101.0, 110.5), device("b", 1, 112.0, 120.0)]
    seen = events("a", [101.5, 102.5, 103.0, 104.0, 110.0]) + events("b", [112.2, 113.2])
    # A device's later report of the same state, and another rollout's events, change nothing.
    seen += events("a", [150.0]) + events("b", [90.0, 91.0, 92.0], rollout="r0")
    timeline = rollout_timeline(view(progress), seen)
    first, second = timeline["stages"]
    assert first == {
        "stage": 0, "percent": 50, "devices": 1, "committed": 1, "wait_s": 1.0, "span_s": 9.5,
        "offer_s": 0.5, "download_s": 1.0, "install_s": 0.5, "gate_s": 1.0, "probation_s": 6.0,
        "reporting_s": 0.5,
    }  # fmt: skip
    # b reported no install, trial or commit: the time since its last event is reporting.
    assert second["offer_s"] == pytest.approx(0.2) and second["download_s"] == pytest.approx(1.0)
    assert second["install_s"] is None and second["reporting_s"] == pytest.approx(6.8)
    assert second["wait_s"] == 1.5 and second["span_s"] == 8.0
    assert timeline["total_s"] == 20.0


def test_a_stage_nobody_finished_has_no_span():
    timeline = rollout_timeline(view([device("a", 0, 101.0, None)]), [])
    stage = timeline["stages"][0]
    assert stage["committed"] == 0 and stage["span_s"] is None and stage["probation_s"] is None
    assert timeline["stages"][1]["devices"] == 0 and timeline["total_s"] is None


def test_the_rollouts_wall_time_runs_from_its_step_to_the_last_wait():
    steps = [
        {"do": "release model v2", "at_s": 1.0},
        {"do": "rollout v2", "at_s": 2.5},
        {"do": "fault broker-restart", "at_s": 8.0},
        {"do": "wait rollout:completed", "at_s": 40.25},
    ]
    assert rollout_wall_s(steps) == 37.8  # rounded to 0.1 s
    assert rollout_wall_s(steps[:2]) is None
