"""The rollout controller over a real SQLite store, with devices answering through the same
Event and Status payloads the agents send (the MQTT hop is exercised by the fleet tests)."""

from __future__ import annotations

import pytest

from gateway.rollouts.controller import RolloutController, RolloutError
from gateway.rollouts.decisions import DeviceFacts, DeviceState, Plan, RolloutState
from gateway.rollouts.store import RolloutStore
from protocol.topics import Event, ModelInfo, Status

DEVICES = [DeviceFacts(f"dev{i:02d}") for i in range(20)]


class Meta:
    hardware_tags = ()
    arena_bytes = None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def fleet(tmp_path):
    sent = []

    async def send(device, command):
        sent.append((device, command))

    clock = Clock()
    store = RolloutStore(tmp_path / "rollouts.db")
    controller = RolloutController(store, send, "http://127.0.0.1:1/", clock=clock)
    yield controller, sent, clock, tmp_path
    store.close()


def answer(controller, sent, good: bool, seen: set):
    for device, command in sent:
        if command.kind != "update" or device in seen:
            continue
        seen.add(device)
        kind = "update_committed" if good else "update_rolled_back"
        controller.on_event(Event(device, 0, kind, {"rollout": command.rollout}))


async def run(controller, sent, clock, good, limit=50):
    seen: set[str] = set()
    for _ in range(limit):
        await controller.tick()
        answer(controller, sent, good, seen)
        clock.now += 1
        rollout = controller.store.get("r1")
        if rollout.state != RolloutState.RUNNING:
            return rollout
    return controller.store.get("r1")


async def test_a_good_model_reaches_every_device(fleet):
    controller, sent, clock, _ = fleet
    controller.start(Plan("r1", "kws", 2, (5, 50, 100), 0, 0.05), DEVICES, Meta)
    rollout = await run(controller, sent, clock, good=True)
    assert rollout.state == RolloutState.COMPLETED
    offered = [d for d, c in sent if c.kind == "update"]
    assert sorted(offered) == sorted(d.device for d in DEVICES)
    assert offered[0] == sent[0][0] and len(set(offered)) == 20


async def test_a_bad_model_pauses_at_the_canary_and_rolls_it_back(fleet):
    controller, sent, clock, _ = fleet
    controller.start(Plan("r1", "kws", 2, (5, 50, 100), 0, 0.05, auto_rollback=True), DEVICES, Meta)
    rollout = await run(controller, sent, clock, good=False)
    assert rollout.state == RolloutState.PAUSED and rollout.stage == 0
    updates = [d for d, c in sent if c.kind == "update"]
    rollbacks = [d for d, c in sent if c.kind == "rollback"]
    assert len(updates) == 1 and rollbacks == updates  # never reached the next stage


async def test_soak_holds_the_next_stage(fleet):
    controller, sent, clock, _ = fleet
    controller.start(Plan("r1", "kws", 2, (5, 100), 30, 0.05), DEVICES, Meta)
    await controller.tick()
    answer(controller, sent, True, set())
    for _ in range(2):
        clock.now += 10
        await controller.tick()
        assert controller.store.get("r1").stage == 0
    clock.now += 15
    await controller.tick()
    assert controller.store.get("r1").stage == 1


async def test_a_repeated_commit_event_does_not_restart_the_soak(fleet):
    """Events are delivered at least once: a device that reconnects sends its commit again,
    and the soak still counts from the first one."""
    controller, sent, clock, _ = fleet
    controller.start(Plan("r1", "kws", 2, (5, 100), 30, 0.05), DEVICES, Meta)
    await controller.tick()
    ((device, command),) = sent
    for _ in range(4):
        controller.on_event(Event(device, 0, "update_committed", {"rollout": command.rollout}))
        clock.now += 10
        await controller.tick()
    assert controller.store.get("r1").stage == 1


async def test_offers_the_broker_did_not_take_are_sent_again(tmp_path):
    """A stage's offers go out side by side; those acknowledged are recorded, a refused one
    fails the tick and is offered again at the next, and no device is recorded twice."""
    sent, refuse = [], set()

    async def send(device, command):
        if device in refuse:
            raise TimeoutError(f"no PUBACK for {device}")
        sent.append(device)

    store = RolloutStore(tmp_path / "rollouts.db")
    controller = RolloutController(store, send, "http://127.0.0.1:1/", clock=Clock())
    controller.start(Plan("r1", "kws", 2, (50, 100), 0, 0.05), DEVICES, Meta)
    first_stage = {p.device for p in store.progress("r1") if p.stage == 0}
    assert len(first_stage) == 10
    refuse |= set(sorted(first_stage)[3:5])
    with pytest.raises(TimeoutError):
        await controller.tick()
    states = {p.device: p.state for p in store.progress("r1")}
    assert set(sent) == first_stage - refuse
    assert all(states[d] == DeviceState.OFFERED for d in sent)
    assert all(states[d] == DeviceState.PENDING for d in refuse)
    refuse.clear()
    await controller.tick()
    assert sorted(sent) == sorted(first_stage)  # each offered once: the two, now
    assert {p.device for p in store.progress("r1") if p.state == DeviceState.OFFERED} == first_stage
    store.close()


async def test_a_restarted_gateway_carries_on(fleet):
    controller, sent, clock, tmp_path = fleet
    controller.start(Plan("r1", "kws", 2, (5, 50, 100), 0, 0.05), DEVICES, Meta)
    await controller.tick()
    await controller.tick()
    controller.store.close()
    store = RolloutStore(tmp_path / "rollouts.db")  # the same file, as after a kill -9
    again = RolloutController(store, controller.send, "http://127.0.0.1:1/", clock=clock)
    # the canary committed while the gateway was down: its retained status says so
    canary = sent[0][0]
    again.on_status(
        Status(canary, "online", 0, model=ModelInfo("kws", 2, "0" * 64), update_state="COMMITTED")
    )
    assert {p.device: p.state for p in store.progress("r1")}[canary] == DeviceState.COMMITTED
    rollout = await run(again, sent, clock, good=True)
    assert rollout.state == RolloutState.COMPLETED


async def test_ineligible_devices_are_skipped_and_listed(fleet):
    controller, _, _, _ = fleet

    class NeedsNpu:
        hardware_tags = ("npu",)
        arena_bytes = None

    devices = [DeviceFacts("a", frozenset({"npu"})), DeviceFacts("b")]
    controller.start(Plan("r1", "kws", 2, (100,), 0, 0.0), devices, NeedsNpu)
    assert controller.store.skipped("r1") == {"b": "lacks hardware tags ['npu']"}
    assert [p.device for p in controller.store.progress("r1")] == ["a"]


async def test_operator_commands_check_the_state(fleet):
    controller, _, _, _ = fleet
    controller.start(Plan("r1", "kws", 2, (100,), 0, 0.0), DEVICES, Meta)
    with pytest.raises(RolloutError, match="already being rolled out"):
        controller.start(Plan("r2", "kws", 3, (100,), 0, 0.0), DEVICES, Meta)
    with pytest.raises(RolloutError, match="is running"):
        controller.resume("r1")
    controller.pause("r1")
    controller.resume("r1")
    controller.abort("r1")
    with pytest.raises(RolloutError, match="no rollout"):
        controller.pause("nope")
