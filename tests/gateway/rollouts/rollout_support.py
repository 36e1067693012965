"""Simulated devices for rollout tests: real MQTT clients (client id = device id) that publish a
retained online status, take commands from their cmd topic, and answer with the real Event and
Status payloads an agent sends. A version listed as bad is rolled back, any other committed."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway.releases.repository import Repository
from protocol.topics import Command, Event, ModelInfo, Status, device_topic
from tests.gateway.release_support import sign
from tests.gateway.support import EDGEFLEET, PREFIX, wait_for

SHA = {1: "1" * 64, 2: "2" * 64, 3: "3" * 64}
# Probation limits for real agents in a rollout: v2 (head retrained) agrees with v1 on ~90 % of
# synthetic inputs, the one-class v3 on none, so the limits sit between them and the verdicts do
# not hang on sampling noise. Latency is not judged: many agents on a busy machine make a p95 of
# a few inputs meaningless.
FAST_PROBATION = {
    "min_samples": 40,
    "window_s": 2.0,
    "shadow_every": 1,
    "min_agreement": 0.5,
    "max_psi": 2.0,
    "latency_floor_ms": 10_000.0,
}


def operator_repository(path: Path, versions=(1, 2)) -> Repository:
    """What the operator signs offline: kws v1 (float32), v2 (head retrained), v3 (all layers)."""
    models = {1: "kws_f32_v1", 2: "kws_f32_v2_head", 3: "kws_f32_v2_full"}
    repo = Repository.init(path)
    for version in versions:
        sign(repo, models[version], "kws", version)
    return repo


class SimDevice:
    def __init__(self, broker, device: str, bad_versions: set[int], delay_s: float = 0.05):
        self.device, self.bad_versions, self.delay_s = device, bad_versions, delay_s
        self.version = 1
        self.commands: list[Command] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(*broker.login(device))
        self.client.will_set(
            device_topic(PREFIX, device, "status"), Status.offline(device).encode(), 1, True
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", broker.config.port, keepalive=10)
        self.client.loop_start()

    def _publish(self, kind: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(device_topic(PREFIX, self.device, kind), payload, 1, retain)

    def _status(self, update_state: str) -> None:
        status = Status(
            self.device,
            "online",
            int(time.time() * 1000),
            agent_version="sim",
            model=ModelInfo("kws", self.version, SHA[self.version]),
            update_state=update_state,
        )
        self._publish("status", status.encode(), retain=True)

    def _event(self, kind: str, rollout: str | None) -> None:
        detail = {"rollout": rollout} if rollout else {}
        event = Event(self.device, int(time.time() * 1000), kind, detail)
        self._publish("events", event.encode())

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(device_topic(PREFIX, self.device, "cmd"), qos=1)
        self._status("COMMITTED")

    def _on_message(self, client, userdata, message) -> None:
        command = Command.decode(message.payload)
        with self._lock:
            self.commands.append(command)
        threading.Timer(self.delay_s, self._answer, (command,)).start()

    def _answer(self, command: Command) -> None:
        if command.kind == "rollback":
            self._event("update_rolled_back", command.rollout)
            return
        self._event("update_offered", command.rollout)
        if command.version in self.bad_versions:
            self._event("update_rolled_back", command.rollout)
            self._status("ROLLED_BACK")
        else:
            self.version = command.version
            self._event("update_committed", command.rollout)
            self._status("COMMITTED")

    def go_offline(self) -> None:
        """What the broker publishes as the last will when a device vanishes."""
        self._publish("status", Status.offline(self.device).encode(), retain=True)

    def received(self, kind: str) -> list[Command]:
        with self._lock:
            return [c for c in self.commands if c.kind == kind]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Fleet:
    def __init__(self, broker, count: int, bad_versions=frozenset()):
        self.devices = [SimDevice(broker, f"sim{i:02d}", set(bad_versions)) for i in range(count)]

    def offered(self) -> list[str]:
        return [d.device for d in self.devices if d.received("update")]

    def close(self) -> None:
        for device in self.devices:
            device.close()


def cli(config_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EDGEFLEET), *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(config_path: Path, *args: str):
    done = cli(config_path, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_inventory(config_path: Path, count: int, version: int = 1) -> None:
    def ready() -> bool:
        done = cli(config_path, "gateway", "devices", "--json")
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        good = [r for r in rows if r["state"] == "online" and r["model_version"] == version]
        return len(good) >= count

    wait_for(ready, 20, f"{count} devices online at version {version}", interval=0.3)


def import_release(gateway, operator: Repository) -> str:
    done = cli(gateway.config_path, "gateway", "import-release", "--from", str(operator.dir))
    assert done.returncode == 0, done.stderr
    return done.stdout
