"""Staged rollouts end to end: a real gateway process serving a real signed repository, real
mosquitto, devices answering commands over MQTT, and the operator's CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from agent.trust import TrustedRepository, TrustError
from edgefleet.models import model_path
from firmware_sim.broker import free_port
from protocol.delta import apply_delta, delta_target_path
from tests.gateway.release_support import sign
from tests.gateway.rollouts.rollout_support import (
    Fleet,
    cli,
    cli_json,
    import_release,
    operator_repository,
    wait_inventory,
)
from tests.gateway.support import EDGEFLEET, wait_for


@pytest.fixture
def operator(tmp_path):
    return operator_repository(tmp_path / "operator", versions=(1, 2))


@pytest.fixture
def start_gateway(broker, make_gateway, operator, tmp_path):
    def start(name="gw", tick_s=0.2, **repository):
        port = free_port()
        return make_gateway(
            broker,
            None,
            name,
            repository={
                "dir": tmp_path / name / "served",
                "keys": operator.keys.online,
                "listen": f"127.0.0.1:{port}",
                **repository,
            },
            rollouts={"tick_s": tick_s, "reoffer_s": 30},
        )

    return start


@pytest.fixture
def fleet(broker):
    fleets: list[Fleet] = []

    def make(count: int, bad_versions=frozenset()) -> Fleet:
        fleets.append(Fleet(broker, count, bad_versions))
        return fleets[-1]

    yield make
    for made in fleets:
        made.close()


def status(gateway, rollout_id: str) -> dict:
    return cli_json(gateway.config_path, "rollout", "status", rollout_id)


def test_an_imported_release_verifies_on_a_device_with_its_delta(
    start_gateway, operator, fleet, tmp_path
):
    gateway = start_gateway()
    done = cli(gateway.config_path, "gateway", "import-release", "--from", str(operator.dir))
    assert done.returncode == 0, done.stderr
    url = gateway.config["repository"]["listen"]
    assert url in done.stdout
    fleet(2)
    wait_inventory(gateway.config_path, 2)
    started = cli_json(
        gateway.config_path, "rollout", "start", "--model", "kws", "--version", "2",
        "--stages", "100", "--soak", "0",
    )  # fmt: skip
    assert started["devices"] == 2

    device = TrustedRepository(
        tmp_path / "tuf", f"http://{url}", operator.metadata_dir / "1.root.json"
    )
    delta = delta_target_path("kws", 1, 2)
    device.download(delta, tmp_path / "delta.efdl")
    rebuilt = apply_delta(
        model_path("kws_f32_v1").read_bytes(), (tmp_path / "delta.efdl").read_bytes()
    )
    assert device.check("kws/2.tflite", rebuilt).model_meta().version == 2
    assert rebuilt == model_path("kws_f32_v2_head").read_bytes()
    wait_for(lambda: status(gateway, started["id"])["state"] == "completed", 20, "completion")


def test_stages_advance_on_verdicts_not_on_the_tick(start_gateway, operator, fleet):
    """With a tick far longer than the whole rollout, the first stage is offered when the
    rollout starts and each next one when the last verdict of the stage before arrives."""
    gateway = start_gateway(tick_s=60)
    import_release(gateway, operator)
    fleet(4)
    wait_inventory(gateway.config_path, 4)
    started = time.monotonic()
    final = cli_json(
        gateway.config_path, "rollout", "start", "--model", "kws", "--version", "2",
        "--stages", "25,50,100", "--soak", "0", "--wait",
    )  # fmt: skip
    assert final["state"] == "completed" and final["committed"] == 4
    assert time.monotonic() - started < 20  # three ticks would take 180 s


def test_a_watched_folder_is_imported_when_the_operator_signs(start_gateway, operator, tmp_path):
    gateway = start_gateway(import_dir=str(operator.dir), import_poll_s=0.2)
    url = f"http://{gateway.config['repository']['listen']}"
    root = operator.metadata_dir / "1.root.json"

    def serves(version: int) -> bool:
        try:
            device = TrustedRepository(tmp_path / f"tuf{version}", url, root)
            return device.target(f"kws/{version}.tflite").model_meta().version == version
        except TrustError:
            return False

    wait_for(lambda: serves(2), 20, "the first import")
    sign(operator, "kws_f32_v2_full", "kws", 3)
    wait_for(lambda: serves(3), 20, "the newer release")


def test_a_good_version_reaches_everyone_through_a_gateway_crash(start_gateway, operator, fleet):
    gateway = start_gateway()
    import_release(gateway, operator)
    devices = fleet(20)
    wait_inventory(gateway.config_path, 20)
    waiter = subprocess.Popen(
        [
            str(EDGEFLEET), "rollout", "start", "--config", str(gateway.config_path),
            "--model", "kws", "--version", "2", "--stages", "5,25,50,100", "--soak", "1s",
            "--max-failure-rate", "0.05", "--wait", "--json",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rollout_id = wait_for(
        lambda: cli_json(gateway.config_path, "rollout", "status")["rollouts"], 20, "the rollout"
    )[0]["id"]

    def at_stage(n):
        view = status(gateway, rollout_id)
        return view["stage"] >= n and view

    view = wait_for(lambda: at_stage(1), 30, "the second stage", interval=0.2)
    assert view["state"] == "running" and view["committed"] < 20
    offered_before_the_kill = set(devices.offered())
    gateway.kill()
    gateway.start()
    final = wait_for(
        lambda: (v := status(gateway, rollout_id))["state"] != "running" and v, 60, "the end"
    )
    assert final["state"] == "completed", final
    assert final["committed"] == 20 and final["failed"] == 0
    assert [row["committed"] for row in final["stages"]] == [1, 4, 5, 10]
    assert sorted(devices.offered()) == sorted(d.device for d in devices.devices)
    assert {p["device"] for p in final["progress"] if p["stage"] == 0} <= offered_before_the_kill
    assert all(d.version == 2 for d in devices.devices)
    url = f"http://{gateway.config['repository']['listen']}"
    assert {c.repository for d in devices.devices for c in d.received("update")} == {url}
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert json.loads(out)["state"] == "completed"


def test_a_bad_version_pauses_at_the_canary_and_rolls_it_back(start_gateway, operator, fleet):
    gateway = start_gateway()
    import_release(gateway, operator)
    devices = fleet(20, bad_versions={2})
    wait_inventory(gateway.config_path, 20)
    done = cli(
        gateway.config_path, "rollout", "start", "--model", "kws", "--version", "2",
        "--stages", "5,50,100", "--soak", "0", "--auto-rollback", "--wait", "--json",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    final = json.loads(done.stdout)
    assert (final["state"], final["stage"], final["failed"]) == ("paused", 0, 1)
    canary = devices.offered()
    assert len(canary) == 1
    wait_for(lambda: devices.devices[int(canary[0][3:])].received("rollback"), 10, "the rollback")
    time.sleep(1.0)  # several ticks: a paused rollout offers nothing more
    assert devices.offered() == canary
    assert status(gateway, final["id"])["state"] == "paused"


def test_status_json_and_operator_commands(start_gateway, operator, fleet):
    gateway = start_gateway()
    config = gateway.config_path
    import_release(gateway, operator)
    fleet(3)
    wait_inventory(config, 3)
    started = cli_json(
        config, "rollout", "start", "--model", "kws", "--version", "2", "--stages", "50,100",
        "--soak", "1h",
    )  # fmt: skip
    rollout_id = started["id"]
    view = status(gateway, rollout_id)
    assert set(view) >= {
        "id", "model", "version", "state", "stage", "reason", "devices", "committed", "failed",
        "blocked", "plan", "stages", "progress", "skipped",
    }  # fmt: skip
    assert view["plan"] == {
        "stages": [50, 100], "soak_s": 3600.0, "max_failure_rate": 0.05, "auto_rollback": False,
        "blocked_deadline_s": 3600.0,
    }  # fmt: skip
    assert [(s["stage"], s["percent"], s["devices"]) for s in view["stages"]] == [
        (0, 50, 2), (1, 100, 1),
    ]  # fmt: skip
    assert {p["device"] for p in view["progress"]} == {"sim00", "sim01", "sim02"}
    wait_for(lambda: status(gateway, rollout_id)["committed"] == 2, 20, "the first stage")
    assert status(gateway, rollout_id)["stage"] == 0  # soaking for an hour

    for action, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        done = cli(config, "rollout", action, rollout_id)
        assert done.returncode == 0 and state in done.stdout, done.stderr
    listed = cli_json(config, "rollout", "status")["rollouts"]
    assert [(r["id"], r["state"]) for r in listed] == [(rollout_id, "aborted")]
    human = cli(config, "rollout", "status", rollout_id)
    assert human.returncode == 0 and "aborted" in human.stdout and "committed" in human.stdout

    for args, message in (
        (("start", "--model", "kws", "--version", "2", "--stages", "50,10"), "--stages"),
        (("start", "--model", "kws", "--version", "0"), "--version"),
        (("start", "--model", "kws", "--version", "2", "--soak", "soon"), "--soak"),
        (("start", "--model", "kws", "--version", "2", "--max-failure-rate", "2"), "rate"),
        (("start", "--model", "kws", "--version", "9"), "not a served release"),
        (("pause", "nope"), "no rollout 'nope'"),
        (("resume", rollout_id), "is aborted"),
    ):
        done = cli(config, "rollout", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, done.stderr)


def test_a_skipped_device_is_listed_with_its_reason(start_gateway, operator, fleet, broker):
    gateway = start_gateway()
    config = gateway.config_path
    import_release(gateway, operator)
    devices = fleet(3)
    wait_inventory(config, 3)
    devices.devices[2].go_offline()
    wait_for(
        lambda: any(r["state"] == "offline" for r in cli_json(config, "gateway", "devices")),
        10,
        "the offline status",
    )
    started = cli_json(
        config, "rollout", "start", "--model", "kws", "--version", "2", "--stages", "100"
    )
    assert started["skipped"] == [{"device": "sim02", "reason": "device is offline"}]
    assert started["devices"] == 2


def test_without_a_repository_section_rollouts_are_refused(make_gateway, broker):
    gateway = make_gateway(broker, None)
    done = cli(gateway.config_path, "rollout", "status")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "no /v1/rollouts" in done.stderr
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(20) == 0


def test_a_release_signed_by_other_keys_is_refused_in_one_line(start_gateway, operator, tmp_path):
    gateway = start_gateway()
    config = gateway.config_path
    import_release(gateway, operator)
    served = gateway.config["repository"]["dir"] / "metadata"
    before = sorted(p.name for p in served.iterdir())
    other = operator_repository(tmp_path / "other", versions=(1, 2, 3))
    done = cli(config, "gateway", "import-release", "--from", str(other.dir))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not signed by the targets key" in lines[0], done.stderr
    assert sorted(p.name for p in served.iterdir()) == before


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ({"keys": "missing"}, "key repository.keys: no snapshot.key in"),
        ({"dir": ""}, "key repository.dir: must not be empty"),
        ({"listen": "127.0.0.1:0"}, "key repository.listen: must be host:port with a port"),
        ({"public_url": "ftp://x"}, "key repository.public_url: must be an http"),
        ({"colour": "red"}, "key repository.colour: unknown key"),
    ],
)
def test_a_bad_repository_section_is_one_line(tmp_path, operator, repository, message):
    from edgefleet.tomlconfig import dumps as toml

    tables = {
        "gateway": {"site": "s1", "data_dir": tmp_path / "data"},
        "repository": {"dir": tmp_path / "served", "keys": operator.keys.online} | repository,
    }
    (tmp_path / "gateway.toml").write_text(toml(tables))
    done = subprocess.run(
        [str(EDGEFLEET), "gateway", "run", "--config", str(tmp_path / "gateway.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway.toml: " + message in lines[0], done.stderr
