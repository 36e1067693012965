"""A fleet in light mode (many real agents per host process, one host per core) against the
real gateway, mosquitto and cloud: a staged rollout completes with a power cut armed inside one
device's update work and a plain power cut on another, nothing lost; and what light mode cannot
simulate is refused before anything starts, in one line."""

from __future__ import annotations

import json
import os

import pytest

from edgefleet.errors import UserError
from firmware_sim.fleet.scenario import parse
from tests.sim.test_scenarios import REPO, assert_adds_up, sim

LIGHT = {"devices": 3, "model": "fixture:kws_f32_v1", "mode": "light"}


def agent_starts(logs: list[str], device: str) -> int:
    return sum(
        1
        for text in logs
        for line in text.splitlines()
        if '"agent_ready"' in line and json.loads(line).get("device") == device
    )


@pytest.mark.slow
def test_a_light_fleet_rolls_out_through_power_cuts(tmp_path):
    done, report = sim(REPO / "scenarios" / "light_fleet_power_cuts.toml", tmp_path)
    assert report is not None, done.stderr[-3000:]
    assert done.returncode == 0, json.dumps(report["violations"]) + done.stderr[-2000:]
    assert_adds_up(report)
    assert report["devices_on_target"] == report["devices_total"] == 20
    assert report["telemetry_sent"] > 0 and report["telemetry_lost"] == 0
    hosts = sorted((tmp_path / "run" / "light").glob("host*.log"))
    assert len(hosts) == min(os.cpu_count() or 1, 20)
    logs = [path.read_text() for path in hosts]
    # the cut inside dev000's update and the plain one on dev001 each cost one restart
    assert agent_starts(logs, "dev000") == agent_starts(logs, "dev001") == 2
    assert agent_starts(logs, "dev002") == 1


@pytest.mark.parametrize(
    ("step", "fleet", "message"),
    [
        ({"kind": "clock-skew", "by": "+1d", "for": 5, "devices": ["dev001"]}, {}, "clock-skew"),
        ({"kind": "clock-jump", "by": "45d"}, {}, "clock-jump"),
        (None, {"mcus": 1}, "fleet.mcus"),
    ],
)
def test_what_light_mode_cannot_simulate_is_refused_in_one_line(step, fleet, message):
    data = {"name": "t", "fleet": LIGHT | fleet}
    if step is not None:
        data["step"] = [{"at": 1, "do": "fault"} | step]
    with pytest.raises(UserError) as caught:
        parse(data, "t", None)
    text = str(caught.value)
    assert message in text and 'fleet.mode = "light"' in text and "\n" not in text


def test_the_mode_is_process_by_default_and_checked():
    def mode(fleet: dict) -> str:
        return parse({"name": "t", "fleet": fleet}, "t", None).fleet.mode

    assert mode(LIGHT) == "light" and mode(LIGHT | {"mode": "process"}) == "process"
    assert mode({k: v for k, v in LIGHT.items() if k != "mode"}) == "process"
    with pytest.raises(UserError, match=r"fleet\.mode: must be one of process, light"):
        parse({"name": "t", "fleet": LIGHT | {"mode": "threads"}}, "t", None)
