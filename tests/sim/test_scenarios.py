"""Every scenario in scenarios/ run by ``edgefleet sim`` as a user's CI would run it: real
agents, gateway, mosquitto and cloud ingest as processes on loopback. Each must pass its own
expectations; on top, the report must add up (telemetry lost is computed, not assumed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.fleet.releases import one_class

REPO = Path(__file__).resolve().parents[2]
# The quality loop has a test of its own that also reads its dataset, the light fleet one that
# also reads its hosts' logs.
OWN_TESTS = {"model_quality_loop", "light_fleet_power_cuts"}
SCENARIOS = sorted(p for p in (REPO / "scenarios").glob("*.toml") if p.stem not in OWN_TESTS)
REPORT_KEYS = {
    "scenario", "passed", "duration_s", "devices_total", "devices_on_target",
    "devices_rolled_back", "bricked", "rollout_state", "telemetry_sent",
    "telemetry_delivered_unique", "telemetry_lost", "telemetry_dropped_counted",
    "attacks_refused", "mcus_on_target", "violations", "telemetry_dead_lettered",
    "gateway_unplanned_exits", "malformed_counted", "impersonations_refused",
    "update_refusals_transient", "devices_blocked", "metadata_expiry_warnings",
    "telemetry_curated_out", "samples_captured", "samples_in_dataset", "cloud_bytes",
    "cloud_bytes_unfiltered", "dataset",
}  # fmt: skip

pytestmark = pytest.mark.slow


def sim(path: Path, tmp_path: Path, *args: str, timeout: float = 400):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "sim", str(path), "--report", str(report),
         "--workdir", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip
    return done, json.loads(report.read_text()) if report.exists() else None


def assert_adds_up(report: dict) -> None:
    assert set(report) >= REPORT_KEYS
    lost = (
        report["telemetry_sent"]
        - report["telemetry_delivered_unique"]
        - report["telemetry_dropped_counted"]
        - report["telemetry_dead_lettered"]
        - report["telemetry_curated_out"]
    )
    assert report["telemetry_lost"] == lost
    assert 0 <= report["devices_on_target"] <= report["devices_total"]
    assert report["passed"] == (report["violations"] == [])


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_passes(path, tmp_path):
    done, report = sim(path, tmp_path)
    assert report is not None, done.stderr[-3000:]
    assert done.returncode == 0, json.dumps(report["violations"]) + done.stderr[-2000:]
    assert_adds_up(report)
    assert report["telemetry_sent"] > 0 and report["telemetry_lost"] == 0
    assert report["bricked"] == 0 and report["gateway_unplanned_exits"] == 0


def test_an_unmet_expectation_fails_the_run(tmp_path):
    """Exit 1 and the violation named, so a CI job stops on it."""
    path = tmp_path / "strict.toml"
    path.write_text(
        'name = "strict"\ntime_limit = "30s"\n'
        '[fleet]\ndevices = 2\nmodel = "fixture:vision_f32_v1"\nrate_hz = 10\n'
        '[[step]]\nat = "1s"\ndo = "wait"\nuntil = "devices_on_target:all"\n'
        '[expect]\ntelemetry_sent = 0\ndevices_on_target = "all"\n'
    )
    done, report = sim(path, tmp_path, "--json")
    assert done.returncode == 1, done.stderr[-2000:]
    assert json.loads(done.stdout) == report
    assert report["devices_on_target"] == 2 and report["telemetry_sent"] > 0
    assert report["violations"] == [f"telemetry_sent = {report['telemetry_sent']}, expected 0"]
    assert_adds_up(report)


def test_a_bad_model_brought_by_the_scenario_is_caught_by_probation(tmp_path, models):
    """A release of a model file with no ``gate`` key is published as given: here a model that
    predicts one class for everything, which only the devices' probation can tell."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "broken.tflite").write_bytes(
        one_class(models("kws_f32_v2_head").read_bytes())
    )
    path = tmp_path / "own_model.toml"
    path.write_text(
        'name = "own-model"\ntime_limit = "90s"\n'
        '[fleet]\ndevices = 3\nmodel = "fixture:kws_f32_v1"\nname = "kws"\nrate_hz = 20\n'
        '[[step]]\nat = "1s"\ndo = "release"\nmodel = "models/broken.tflite"\nversion = 2\n'
        '[[step]]\nat = "2s"\ndo = "rollout"\nversion = 2\nstages = [100]\nauto_rollback = true\n'
        '[[step]]\nat = "2s"\ndo = "wait"\nuntil = "rollout:paused"\n'
        '[expect]\ndevices_rolled_back = ">=1"\ndevices_on_target = 0\n'
    )
    done, report = sim(path, tmp_path)
    assert done.returncode == 0, json.dumps(report and report["violations"]) + done.stderr[-2000:]
    assert report["rollout_state"] == "paused"


def test_the_built_in_broker_carries_a_rollout(tmp_path):
    """amqtt in place of mosquitto (what a machine without mosquitto gets): the gateway speaks
    MQTT 3.1.1 to it, and the staged rollout and lossless telemetry hold."""
    done, report = sim(REPO / "scenarios" / "clean_rollout.toml", tmp_path, "--broker", "embedded")
    assert report is not None, done.stderr[-3000:]
    assert done.returncode == 0, json.dumps(report["violations"]) + done.stderr[-2000:]
    assert report["broker"] == "embedded"
    assert_adds_up(report)
    assert report["telemetry_sent"] > 0 and report["telemetry_lost"] == 0
    gateway_config = (tmp_path / "run" / "gateway" / "gateway.toml").read_text()
    assert 'protocol = "3.1.1"' in gateway_config
    timeline = report["rollout_timeline"]
    assert [s["committed"] for s in timeline["stages"]] == [
        s["devices"] for s in timeline["stages"]
    ]
    assert sum(s["devices"] for s in timeline["stages"]) == report["devices_total"]
    for stage in timeline["stages"]:
        assert all(stage[f"{phase}_s"] >= 0 for phase in ("offer", "download", "probation"))
    # The stages follow one another: their waits and spans make up the whole rollout.
    parts = sum(s["wait_s"] + s["span_s"] for s in timeline["stages"])
    assert parts == pytest.approx(timeline["total_s"], abs=0.05)


def test_broker_faults_are_refused_before_start_without_mosquitto(tmp_path):
    """The built-in broker keeps nothing across a restart, so a broker fault would lose what it
    queued and blame the fleet: the run is refused in one line before anything starts."""
    path = REPO / "scenarios" / "broker_and_cloud_outages.toml"
    done, report = sim(path, tmp_path, "--broker", "embedded", timeout=60)
    assert done.returncode == 2 and report is None
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "broker-restart" in done.stderr and "install mosquitto" in done.stderr
    assert not (tmp_path / "run" / "devices").exists()
