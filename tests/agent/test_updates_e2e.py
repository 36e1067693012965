"""Model updates through the running agent, with real parts only: mosquitto, the gateway's
repository served over HTTP, the agent as a process (SIGKILLed in one case), and a gateway-side
client that sends the update command and watches events, status and telemetry."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from agent.updater.device import UpdaterDevice
from edgefleet.models import model_path
from firmware_sim.fleet.releases import one_class
from protocol.telemetry import Record
from protocol.topics import Command, Event, Status, device_topic
from tests.agent.agent_support import (
    AgentProcess,
    Collector,
    agent_config,
    assert_exact_delivery,
    wait_for,
    write_config,
)
from tests.updater.conftest import World, open_world
from tests.updater.support import assert_runs_gated, model, release

PROBATION = {"min_samples": 100, "window_s": 3.0, "shadow_every": 2}
UPDATE_KINDS = ("update_offered", "update_downloaded", "update_installed", "update_trial")


def sign_more(repo) -> None:
    """v3: predicts one class for every input (passes the gate, fails probation); v4: signed,
    then its bytes on the server replaced (same length), as a tampering mirror would."""
    release(repo, one_class(model("kws_f32_v1")), 3)
    release(repo, model("kws_f32_v2_full"), 4)
    for stored in (repo.dir / "targets" / "kws").glob("*4.tflite"):
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """kws v1..v4 signed and served over HTTP; a device template provisioned with v1."""
    with open_world(tmp_path_factory.mktemp("agent-updates"), sign_more) as opened:
        yield opened


class Gateway:
    """The gateway's side of dev1: send commands, watch its events and retained status."""

    def __init__(self, collector: Collector, world: World):
        self.collector, self.world = collector, world
        self.cmd_topic = device_topic("edgefleet/site1", "dev1", "cmd")

    def status(self, check, what: str, timeout: float = 20.0) -> Status:
        def matching():
            status = self.collector.status("dev1")
            return status if status and status.state == "online" and check(status) else None

        return wait_for(matching, timeout, what)

    def send(self, kind: str, **fields) -> None:
        command = Command(id=uuid.uuid4().hex, kind=kind, **fields)
        self.collector.publish(self.cmd_topic, command.encode())

    def offer(self, version: int, rollout: str, **fields) -> None:
        self.send(
            "update",
            model="kws",
            version=version,
            rollout=rollout,
            repository=self.world.url,
            **fields,
        )

    def events(self, rollout: str) -> list[Event]:
        return [e for e in self.collector.data.events if e.detail.get("rollout") == rollout]

    def wait_event(self, rollout: str, kinds: tuple[str, ...], timeout: float = 30.0) -> Event:
        def found():
            return next((e for e in self.events(rollout) if e.kind in kinds), None)

        return wait_for(found, timeout, f"event {kinds} for rollout {rollout}")


class Device1:
    """dev1 with the updater on: its state folder seeded from the provisioned template, or
    (``provisioned=False``) set up the README's way, only its model file named in the config."""

    def __init__(self, tmp_path: Path, world: World, broker, provisioned=True, **probation):
        self.state_dir = tmp_path / "state-dev1"
        if provisioned:
            shutil.copytree(world.template, self.update_dir, symlinks=True)
        tables = agent_config(tmp_path, broker, model_path("kws_f32_v1"))
        tables["model"] |= {"name": "kws", "version": 1}
        tables["update"] = {"trusted_root": world.root, "probation": PROBATION | probation}
        self.config = write_config(tmp_path / "agent.toml", tables)

    @property
    def update_dir(self) -> Path:
        return self.state_dir / "update"

    @property
    def spool(self) -> Path:
        return self.state_dir / "spool.db"

    def start(self) -> AgentProcess:
        return AgentProcess(self.config)


def on_version(version: int, state: str):
    return lambda s: s.model and s.model.version == version and s.update_state == state


def versions_in_order(records: list[Record]) -> list[int]:
    """The model versions of the records by sequence number, each run of equal ones once."""
    runs: list[int] = []
    for record in sorted(records, key=lambda r: r.id.seq):
        if not runs or runs[-1] != record.body.version:
            runs.append(record.body.version)
    return runs


def offer_and_wait(
    gateway: Gateway, version: int, rollout: str, kinds: tuple[str, ...], **fields
) -> Event:
    """Send the offer until the agent answers (the first may beat its subscription; a repeat
    is the same update), then wait for one of ``kinds``."""
    deadline = time.monotonic() + 15
    while not gateway.events(rollout):
        assert time.monotonic() < deadline, "the agent never answered the offer"
        gateway.offer(version, rollout, **fields)
        wait_for_quietly(lambda: gateway.events(rollout), 2.0)
    return gateway.wait_event(rollout, kinds)


def wait_for_quietly(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def records_after(gateway: Gateway, count: int, what: str) -> None:
    seen = len(gateway.collector.records())
    wait_for(lambda: len(gateway.collector.records()) >= seen + count, 20, what)


def stop_and_check_delivery(agent: AgentProcess, gateway: Gateway, device: Device1) -> list[Record]:
    """Every record numbered was delivered or counted as dropped; returns this boot's records."""
    assert agent.terminate() == 0, agent.log()
    spool = assert_exact_delivery(gateway.collector, device.spool)
    return [r for r in gateway.collector.records() if r.id.boot == spool.boot]


@pytest.fixture
def gateway(broker, world):
    collector = Collector(broker.config.port)
    yield Gateway(collector, world)
    collector.close()


def test_fine_tune_is_committed_and_telemetry_switches_without_loss(
    tmp_path, broker, gateway, world
):
    device = Device1(tmp_path, world, broker)
    agent = device.start()
    gateway.status(on_version(1, "COMMITTED"), "status on v1 from the provisioned slot")
    records_after(gateway, 200, "records of v1")

    offer_and_wait(gateway, 2, "r-head", ("update_committed", "update_rolled_back"))
    kinds = [e.kind for e in gateway.events("r-head")]
    assert kinds == [*UPDATE_KINDS, "update_committed"], kinds
    status = gateway.status(on_version(2, "COMMITTED"), "status on v2, committed")
    assert status.model.sha256 == world.v2
    assert status.slots["active_version"] == 2 and status.slots["fallback_slot"] is None
    records_after(gateway, 300, "records after the commit")

    records = stop_and_check_delivery(agent, gateway, device)
    assert versions_in_order(records) == [1, 2], "one switch, no record of v1 after v2"
    drift_v2 = [r for r in records if r.body.kind == "drift" and r.body.version == 2]
    assert drift_v2 and all(r.body.compared for r in drift_v2), "v2's signed drift reference"


def test_model_that_fails_probation_is_rolled_back(tmp_path, broker, gateway, world):
    device = Device1(tmp_path, world, broker)
    agent = device.start()
    gateway.status(on_version(1, "COMMITTED"), "status on v1")

    end = offer_and_wait(gateway, 3, "r-one", ("update_committed", "update_rolled_back"))
    assert end.kind == "update_rolled_back", end
    assert str(end.detail["reason"]).startswith("probation: agrees with the incumbent on")
    assert [e.kind for e in gateway.events("r-one")][:4] == list(UPDATE_KINDS)
    status = gateway.status(on_version(1, "ROLLED_BACK"), "status back on v1")
    assert status.model.sha256 == world.v1
    records_after(gateway, 200, "records after the rollback")

    records = stop_and_check_delivery(agent, gateway, device)
    assert versions_in_order(records) == [1, 3, 1]


def test_a_device_set_up_from_its_config_gets_a_trial_and_rolls_back(
    tmp_path, broker, gateway, world
):
    """The model file named in agent.toml becomes the incumbent of a slot at first start, so
    the first update over the air is shadowed, judged, and rolled back to it."""
    device = Device1(tmp_path, world, broker, provisioned=False)
    agent = device.start()
    status = gateway.status(on_version(1, "IDLE"), "status on the configured v1")
    assert status.slots["active_version"] == 1 and status.model.sha256 == world.v1
    agent.wait_logged("configured_model_adopted")

    end = offer_and_wait(gateway, 3, "r-first", ("update_committed", "update_rolled_back"))
    assert end.kind == "update_rolled_back", end
    assert [e.kind for e in gateway.events("r-first")][:4] == list(UPDATE_KINDS)
    status = gateway.status(on_version(1, "ROLLED_BACK"), "status back on the configured v1")
    assert status.model.sha256 == world.v1 and status.slots["active_version"] == 1
    assert UpdaterDevice(device.update_dir).slots.pointer().active.sha256 == world.v1
    stop_and_check_delivery(agent, gateway, device)


def test_sigkill_in_trial_comes_back_on_a_gated_model_and_finishes(
    tmp_path, broker, gateway, world
):
    device = Device1(tmp_path, world, broker, window_s=4.0)
    agent = device.start()
    gateway.status(on_version(1, "COMMITTED"), "status on v1")
    offer_and_wait(gateway, 2, "r-kill", ("update_trial",))
    gateway.status(on_version(2, "TRIAL"), "status on the candidate, in trial", timeout=10)
    agent.kill()
    assert_runs_gated(device.update_dir, {world.v1, world.v2})

    again = device.start()
    restarted = gateway.status(
        lambda s: s.slots.get("trial_boots") == 1 and s.model is not None, "status after restart"
    )
    assert (restarted.model.version, restarted.update_state) == (2, "TRIAL")
    end = gateway.wait_event("r-kill", ("update_committed", "update_rolled_back"))
    assert end.kind == "update_committed" and end.detail["boots"] == 1
    gateway.status(on_version(2, "COMMITTED"), "status committed after the restart")
    assert UpdaterDevice(device.update_dir).slots.pointer().previous is None

    records = stop_and_check_delivery(again, gateway, device)
    assert versions_in_order(records) == [1, 2]


def test_operator_rollback_during_trial_and_a_repeated_offer_is_ignored(
    tmp_path, broker, gateway, world
):
    device = Device1(tmp_path, world, broker, window_s=600.0)
    agent = device.start()
    gateway.status(on_version(1, "COMMITTED"), "status on v1")
    offer_and_wait(gateway, 2, "r-op", ("update_trial",))
    gateway.status(on_version(2, "TRIAL"), "status on the candidate, in trial", timeout=10)
    gateway.offer(2, "r-op")  # delivered again: the same update, already on trial
    gateway.send("rollback", model="kws", rollout="r-op")

    end = gateway.wait_event("r-op", ("update_rolled_back", "update_committed"))
    assert (end.kind, end.detail["reason"]) == ("update_rolled_back", "operator")
    assert [e.kind for e in gateway.events("r-op")] == [*UPDATE_KINDS, "update_rolled_back"]
    gateway.status(on_version(1, "ROLLED_BACK"), "status back on v1")
    records_after(gateway, 200, "records after the rollback")
    assert versions_in_order(stop_and_check_delivery(agent, gateway, device)) == [1, 2, 1]


def test_a_tampered_model_blocks_the_device_on_v1_until_the_offer_runs_out(
    tmp_path, broker, gateway, world
):
    """A mirror serving the wrong bytes is a problem of the way, not of the model: the device
    says it is blocked and why, tries again with a fresh refresh, and gives the update up when
    the offer's ``retry_for_s`` has passed, on v1 all along."""
    device = Device1(tmp_path, world, broker)
    agent = device.start()
    gateway.status(on_version(1, "COMMITTED"), "status on v1")

    blocked = offer_and_wait(gateway, 4, "r-bad", ("update_blocked",), retry_for_s=6)
    assert "hash-mismatch" in str(blocked.detail["reason"]), blocked.detail
    end = gateway.wait_event("r-bad", ("update_refused", "update_trial"))
    assert end.kind == "update_refused", end
    assert str(end.detail["reason"]).startswith("blocked for more than 6 s: hash-mismatch")
    kinds = [e.kind for e in gateway.events("r-bad")]
    assert kinds[0] == "update_offered" and kinds[-1] == "update_refused", kinds
    assert set(kinds[1:-1]) == {"update_blocked"} and len(kinds) >= 4, kinds  # tried again
    status = gateway.status(on_version(1, "REFUSED"), "status refused, on v1")
    assert status.model.sha256 == world.v1 and status.slots["active_version"] == 1
    assert UpdaterDevice(device.update_dir).slots.pointer().active.sha256 == world.v1
    stop_and_check_delivery(agent, gateway, device)


def test_without_an_update_section_offers_are_rejected_with_the_reason(tmp_path, broker, gateway):
    tables = agent_config(tmp_path, broker, model_path("kws_f32_v1"))
    agent = AgentProcess(write_config(tmp_path / "agent.toml", tables))
    rejected = offer_and_wait(gateway, 2, "r-none", ("command_rejected",))
    assert "[update]" in str(rejected.detail["reason"])
    status = gateway.status(lambda s: s.model is not None, "status")
    assert (status.model.name, status.update_state) == ("kws_f32_v1", "IDLE")
    assert agent.terminate() == 0
