"""Reading scenario files: every key checked before anything starts, one line naming the key
for each mistake, and the duration and comparison syntax the format documents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.errors import UserError
from firmware_sim.fleet.commands import DEMO
from firmware_sim.fleet.devices import PROBATION
from firmware_sim.fleet.scenario import Expectation, load, parse, parse_duration

GOOD = """
name = "t"
time_limit = "2m"

[fleet]
devices = 3
model = "fixture:kws_f32_v1"

[[step]]
at = "1.5s"
do = "fault"
kind = "partition"
devices = ["dev001"]
for = "500ms"

[[step]]
at = 2
do = "release"
model = "{model}"
version = 2
gate = "fail-probation"

[[step]]
at = "3s"
do = "wait"
until = "rollout:paused"

[expect]
devices_on_target = "all"
telemetry_lost = "<=0"
rollout_state = "paused"
"""


def write(tmp_path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_a_good_scenario_reads_with_paths_relative_to_its_file(tmp_path, models):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "new.tflite").write_bytes(models("kws_f32_v2_head").read_bytes())
    scenario = load(write(tmp_path, GOOD.format(model="m/new.tflite")))
    assert scenario.time_limit_s == 120.0
    assert scenario.fleet.model == models("kws_f32_v1")
    partition, release, wait = (step.action for step in scenario.steps)
    assert (partition.kind, partition.devices, partition.for_s) == ("partition", ("dev001",), 0.5)
    assert release.model == tmp_path / "m" / "new.tflite" and release.gate == "fail-probation"
    assert (wait.until, wait.timeout_s) == ("rollout:paused", 60.0)
    assert scenario.partitionable() == {"dev001"}
    assert scenario.fleet.probation == PROBATION  # the simulator's own unless the scenario says


def test_the_fleet_probation_overrides_the_simulators_key_by_key(tmp_path):
    text = GOOD.format(model="fixture:kws_f32_v2_head").replace(
        'model = "fixture:kws_f32_v1"\n',
        'model = "fixture:kws_f32_v1"\n\n[fleet.probation]\nmin_samples = 10\nwindow_s = 1\n',
        1,
    )
    scenario = load(write(tmp_path, text))
    assert scenario.fleet.probation == PROBATION | {"min_samples": 10, "window_s": 1}


BAD = [
    ('colour = "blue"', "key colour: unknown key"),
    ('[fleet]\ndevices = 0\nmodel = "fixture:kws_f32_v1"', "fleet.devices: must be >= 1"),
    ('[fleet]\ndevices = 2\nmodel = "fixture:nope"', "no bundled model 'nope'"),
    ('[fleet]\ndevices = 2\nmodel = "missing.tflite"', "no such model file"),
    ("[[step]]\nat = \"1s\"\ndo = \"dance\"", "step[0].do: must be one of release"),
    ("[[step]]\nat = \"soon\"\ndo = \"wait\"\nuntil = \"rollout:completed\"", "bad duration"),
    ("[[step]]\nat = 1\ndo = \"fault\"\nkind = \"meteor\"", "step[0].kind: must be one of"),
    ("[[step]]\nat = 1\ndo = \"fault\"\nkind = \"broker-down\"", "step[0].for: is required"),
    ("[[step]]\nat = 1\ndo = \"fault\"\nkind = \"power-cut\"\nstate = \"asleep\"", "state"),
    ("[[step]]\nat = 1\ndo = \"fault\"\nkind = \"mcu-power-cut\"", "needs fleet.mcus > 0"),
    ("[[step]]\nat = 1\ndo = \"rollout\"\nversion = 2\nstages = [50, 10]", "must rise"),
    ("[[step]]\nat = 1\ndo = \"fault\"\nkind = \"partition\"\ndevices = [\"x\"]\nfor = 1",
     "step[0].devices"),
    ('[fleet]\ndevices = 2\nmodel = "fixture:kws_f32_v1"\n[fleet.probation]\nmin_samples = 0',
     "fleet.probation.min_samples: must be >= 1"),
    ('[fleet]\ndevices = 2\nmodel = "fixture:kws_f32_v1"\n[fleet.probation]\npatience = 3',
     "fleet.probation.patience: unknown key"),
    ('[fleet]\ndevices = 2\nmodel = "fixture:kws_f32_v1"\nprobation = 3',
     "fleet.probation: must be a table"),
    ("[expect]\nhappiness = 1", "expect.happiness: not a report key"),
    ("[expect]\nbricked = \"few\"", "expect.bricked: must be a value, a comparison"),
    ("[expect]\nbricked = \"all\"", '"all" only applies to'),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_scenario_one_line_naming_the_key(tmp_path, extra, message):
    fleet = "" if "[fleet]" in extra else '[fleet]\ndevices = 2\nmodel = "fixture:kws_f32_v1"\n'
    if extra.startswith("colour"):  # a top-level key must come before the first table
        extra, fleet = fleet, extra + "\n"
    path = write(tmp_path, 'name = "t"\n' + fleet + extra + "\n")
    with pytest.raises(UserError) as caught:
        load(path)
    text = str(caught.value)
    assert message in text and "\n" not in text and str(path) in text


def test_cli_bad_scenario_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, 'name = "t"\n[fleet]\ndevices = "many"\n')
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "sim", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "fleet.devices: must be a int, not str" in done.stderr


@given(st.integers(0, 10**6), st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]))
def test_durations(count, unit):
    suffix, scale = unit
    assert parse_duration(f"{count}{suffix}", "x") == pytest.approx(count * scale)
    assert parse_duration(count, "x") == count


@given(st.text(max_size=12).filter(lambda t: not t.strip().replace(".", "", 1).isdigit()))
def test_bad_durations_refused_or_understood(text):
    try:
        assert parse_duration(text, "x") >= 0
    except UserError as exc:
        assert "bad duration" in str(exc)


def expectation(key, want):
    scenario = parse(
        {
            "name": "t",
            "fleet": {"devices": 1, "model": "fixture:kws_f32_v1"},
            "expect": {key: want},
        },
        "t",
        None,
    )
    return scenario.expect[0]


@given(st.integers(-5, 5), st.integers(-5, 5), st.sampled_from([">=", "<=", ">", "<", "==", "!="]))
def test_comparisons_follow_python(got, number, op):
    check = expectation("bricked", f"{op}{number}").check({"bricked": got})
    holds = eval(f"{got} {op} {number}")  # the six operators, as Python reads them
    assert (check is None) == holds
    if not holds:
        assert check == f"bricked = {got}, expected {op}{number}"


def test_all_and_exact_values():
    assert (
        expectation("devices_on_target", "all").check({"devices_on_target": 3, "devices_total": 3})
        is None
    )
    assert "expected all (4)" in expectation("devices_on_target", "all").check(
        {"devices_on_target": 3, "devices_total": 4}
    )
    assert expectation("rollout_state", "paused").check({"rollout_state": "paused"}) is None
    assert expectation("passed", True).check({"passed": False}) is not None
    assert isinstance(Expectation("bricked", (">=", 1.0)).check({"bricked": None}), str)


SHIPPED = [
    *sorted((Path(__file__).resolve().parents[2] / "scenarios").rglob("*.toml")),
    DEMO,
]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_reads(path):
    scenario = load(path)
    assert scenario.steps and scenario.expect


FLEET = {"devices": 3, "model": "fixture:kws_f32_v1"}


def fault_step(**keys):
    data = {"name": "t", "fleet": FLEET, "step": [{"at": 1, "do": "fault", **keys}]}
    return parse(data, "t", None).steps[0].action


def test_hostile_and_clock_faults_read():
    poison = fault_step(kind="poison", devices=["dev000", "dev002"], count=3)
    assert (poison.devices, poison.count) == (("dev000", "dev002"), 3)
    assert fault_step(kind="impersonate", devices=2).devices == 2
    reject = fault_step(kind="cloud-reject", rate=0.25, **{"for": "10s"})
    assert (reject.rate, reject.for_s) == (0.25, 10.0)
    assert fault_step(kind="clock-jump", by="45d").by_s == 45 * 86400
    skew = fault_step(kind="clock-skew", devices=["dev001"], by="-2h", **{"for": "1m"})
    assert (skew.by_s, skew.for_s, skew.devices) == (-7200.0, 60.0, ("dev001",))
    assert fault_step(kind="clock-skew", by="+400d", **{"for": 5}).by_s == 400 * 86400


def test_provision_reads_with_update_as_default():
    def read(**extra):
        return parse({"name": "t", "fleet": FLEET | extra}, "t", None).fleet.provision

    assert read() == "update" and read(provision="config") == "config"


NEW_BAD = [
    ({"kind": "clock-jump"}, "step[0].by: is required"),
    ({"kind": "clock-jump", "by": "-3d"}, "step[0].by: a clock jump goes forward"),
    ({"kind": "clock-jump", "by": "soon"}, "bad clock offset"),
    ({"kind": "clock-jump", "by": "0s"}, "must be non-zero"),
    ({"kind": "clock-skew", "by": "+1d"}, "step[0].for: is required"),
    ({"kind": "cloud-reject", "rate": 2, "for": 1}, "step[0].rate"),
    ({"kind": "poison", "count": 0}, "step[0].count"),
    ({"kind": "poison", "devices": ["nobody"]}, "step[0].devices"),
    ({"kind": "impersonate", "count": 2}, "unknown key"),
    ({"kind": "partition", "for": 1, "by": "1d"}, "unknown key"),
]


@pytest.mark.parametrize(("keys", "message"), NEW_BAD)
def test_bad_new_fault_keys_one_line(keys, message):
    with pytest.raises(UserError) as caught:
        fault_step(**keys)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bad_provision_names_the_key():
    with pytest.raises(UserError, match=r"fleet\.provision: must be one of update, config"):
        parse({"name": "t", "fleet": FLEET | {"provision": "factory"}}, "t", None)


def test_clock_faults_are_refused_in_one_line_without_libfaketime(tmp_path, monkeypatch):
    from firmware_sim.fleet.world import World

    monkeypatch.setattr("firmware_sim.fleet.clock.LIBRARY_GLOBS", ("/nonexistent/*.so.1",))
    scenario = parse(
        {
            "name": "t",
            "fleet": FLEET,
            "step": [{"at": 1, "do": "fault", "kind": "clock-jump", "by": "45d"}],
        },
        "t",
        None,
    )
    with pytest.raises(UserError) as caught:
        World(scenario, tmp_path, None)
    text = str(caught.value)
    assert "step 0 (fault clock-jump)" in text and "libfaketime" in text and "\n" not in text
    assert not (tmp_path / "devices").exists()
