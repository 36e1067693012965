"""``edgefleet device provision``: one command makes a real agent able to log in at a real
mosquitto and publish as itself, and the password appears only in files of mode 0600."""

from __future__ import annotations

import json
import signal
import subprocess

from firmware_sim.broker import probe_login
from tests.agent.agent_support import AgentProcess, Collector, wait_for
from tests.gateway.support import EDGEFLEET


def provision(broker, repo, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(EDGEFLEET),
            "device",
            "provision",
            "pi-0001",
            "--site",
            "site1",
            "--broker-url",
            broker.url,
            "--repository",
            str(repo.dir),
            "--broker-dir",
            str(broker.config.workdir),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_provisioned_bundle_runs_a_real_agent(tmp_path, broker, repo, models):
    bundle = tmp_path / "bundle"
    result = provision(
        broker,
        repo,
        bundle,
        "--state-dir",
        str(tmp_path / "state"),
        "--model",
        str(models("kws_f32_v1")),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert done["files"] == ["agent.toml", "mqtt-password", "root.json"]
    password = (bundle / "mqtt-password").read_text().strip()
    assert password not in result.stdout + result.stderr
    for name in ("agent.toml", "mqtt-password"):
        assert (bundle / name).stat().st_mode & 0o777 == 0o600
    assert (bundle / "root.json").read_bytes() == (repo.dir / "metadata/root.json").read_bytes()

    broker._proc.send_signal(signal.SIGHUP)  # what `systemctl reload mosquitto` does
    host, port = broker.config.host, broker.config.port
    wait_for(lambda: probe_login(host, port, "pi-0001", password) == 0, 10, "the new login")

    collector = Collector(port)
    agent = AgentProcess(bundle / "agent.toml")
    wait_for(lambda: len(collector.data.records) >= 50, 30, "the agent's records")
    assert collector.status("pi-0001").state == "online"
    assert agent.terminate() == 0
    collector.close()

    again = provision(broker, repo, tmp_path / "again")
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"edgefleet: error: device pi-0001 is already in {broker.config.workdir / 'passwd'}"
    )


def test_plain_mqtt_off_loopback_is_refused(tmp_path, repo, broker):
    result = subprocess.run(
        [
            str(EDGEFLEET),
            "device",
            "provision",
            "pi-1",
            "--site",
            "s",
            "--broker-url",
            "mqtt://10.0.0.5:1883",
            "--repository",
            str(repo.dir),
            "--broker-dir",
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("plain MQTT only on loopback; use mqtts://")
    assert not (tmp_path / "o").exists()
