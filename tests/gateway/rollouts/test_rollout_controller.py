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
async def fleet(tmp_path):
    sent = []

    async def send(device, command):
        sent.append((device, command))

    clock = Clock()
    async with RolloutStore(tmp_path / "rollouts.db") as store:
        controller = RolloutController(store, send, "http://127.0.0.1:1/", clock=clock)
        yield controller, sent, clock, tmp_path


async def answer(controller, sent, good: bool, seen: set):
    for device, command in sent:
        if command.kind != "update" or device in seen:
            continue
        seen.add(device)
        kind = "update_committed" if good else "update_rolled_back"
        await controller.on_event(Event(device, 0, kind, {"rollout": command.rollout}))


async def run(controller, sent, clock, good, limit=50):
    seen: set[str] = set()
    for _ in range(limit):
        await controller.tick()
        await answer(controller, sent, good, seen)
        clock.now += 1
        rollout = await controller.store.get("r1")
        if rollout.state != RolloutState.RUNNING:
            return rollout
    return await controller.store.get("r1")


async def test_a_good_model_reaches_every_device(fleet):
    controller, sent, clock, _ = fleet
    await controller.start(Plan("r1", "kws", 2, (5, 50, 100), 0, 0.05), DEVICES, Meta)
    rollout = await run(controller, sent, clock, good=True)
    assert rollout.state == RolloutState.COMPLETED
    offered = [d for d, c in sent if c.kind == "update"]
    assert sorted(offered) == sorted(d.device for d in DEVICES)
    assert offered[0] == sent[0][0] and len(set(offered)) == 20


async def test_a_bad_model_pauses_at_the_canary_and_rolls_it_back(fleet):
    controller, sent, clock, _ = fleet
    await controller.start(
        Plan("r1", "kws", 2, (5, 50, 100), 0, 0.05, auto_rollback=True), DEVICES, Meta
    )
    rollout = await run(controller, sent, clock, good=False)
    assert rollout.state == RolloutState.PAUSED and rollout.stage == 0
    updates = [d for d, c in sent if c.kind == "update"]
    rollbacks = [d for d, c in sent if c.kind == "rollback"]
    assert len(updates) == 1 and rollbacks == updates  # never reached the next stage


async def test_soak_holds_the_next_stage(fleet):
    controller, sent, clock, _ = fleet
    await controller.start(Plan("r1", "kws", 2, (5, 100), 30, 0.05), DEVICES, Meta)
    await controller.tick()
    await answer(controller, sent, True, set())
    for _ in range(2):
        clock.now += 10
        await controller.tick()
        assert (await controller.store.get("r1")).stage == 0
    clock.now += 15
    await controller.tick()
    assert (await controller.store.get("r1")).stage == 1


async def test_a_repeated_commit_event_does_not_restart_the_soak(fleet):
    """Events are delivered at least once: a device that reconnects sends its commit again,
    and the soak still counts from the first one."""
    controller, sent, clock, _ = fleet
    await controller.start(Plan("r1", "kws", 2, (5, 100), 30, 0.05), DEVICES, Meta)
    await controller.tick()
    ((device, command),) = sent
    for _ in range(4):
        await controller.on_event(
            Event(device, 0, "update_committed", {"rollout": command.rollout})
        )
        clock.now += 10
        await controller.tick()
    assert (await controller.store.get("r1")).stage == 1


async def test_offers_the_broker_did_not_take_are_sent_again(tmp_path):
    """A stage's offers go out side by side; those acknowledged are recorded, a refused one
    fails the tick and is offered again at the next, and no device is recorded twice."""
    sent, refuse = [], set()

    async def send(device, command):
        if device in refuse:
            raise TimeoutError(f"no PUBACK for {device}")
        sent.append(device)

    async with RolloutStore(tmp_path / "rollouts.db") as store:
        controller = RolloutController(store, send, "http://127.0.0.1:1/", clock=Clock())
        await controller.start(Plan("r1", "kws", 2, (50, 100), 0, 0.05), DEVICES, Meta)
        first_stage = {p.device for p in await store.progress("r1") if p.stage == 0}
        assert len(first_stage) == 10
        refuse |= set(sorted(first_stage)[3:5])
        with pytest.raises(TimeoutError):
            await controller.tick()
        states = {p.device: p.state for p in await store.progress("r1")}
        assert set(sent) == first_stage - refuse
        assert all(states[d] == DeviceState.OFFERED for d in sent)
        assert all(states[d] == DeviceState.PENDING for d in refuse)
        refuse.clear()
        await controller.tick()
        assert sorted(sent) == sorted(first_stage)  # each offered once: the two, now
        offered = {p.device for p in await store.progress("r1") if p.state == DeviceState.OFFERED}
        assert offered == first_stage


async def test_a_restarted_gateway_carries_on(fleet):
    controller, sent, clock, tmp_path = fleet
    await controller.start(Plan("r1", "kws", 2, (5, 50, 100), 0, 0.05), DEVICES, Meta)
    await controller.tick()
    await controller.tick()
    # the same file, opened again as after a kill -9
    async with RolloutStore(tmp_path / "rollouts.db") as store:
        again = RolloutController(store, controller.send, "http://127.0.0.1:1/", clock=clock)
        # the canary committed while the gateway was down: its retained status says so
        canary = sent[0][0]
        committed = ModelInfo("kws", 2, "0" * 64)
        await again.on_status(
            Status(canary, "online", 0, model=committed, update_state="COMMITTED")
        )
        states = {p.device: p.state for p in await store.progress("r1")}
        assert states[canary] == DeviceState.COMMITTED
        rollout = await run(again, sent, clock, good=True)
        assert rollout.state == RolloutState.COMPLETED


async def test_ineligible_devices_are_skipped_and_listed(fleet):
    controller, _, _, _ = fleet

    class NeedsNpu:
        hardware_tags = ("npu",)
        arena_bytes = None

    devices = [DeviceFacts("a", frozenset({"npu"})), DeviceFacts("b")]
    await controller.start(Plan("r1", "kws", 2, (100,), 0, 0.0), devices, NeedsNpu)
    assert await controller.store.skipped("r1") == {"b": "lacks hardware tags ['npu']"}
    assert [p.device for p in await controller.store.progress("r1")] == ["a"]


async def test_operator_commands_check_the_state(fleet):
    controller, _, _, _ = fleet
    await controller.start(Plan("r1", "kws", 2, (100,), 0, 0.0), DEVICES, Meta)
    with pytest.raises(RolloutError, match="already being rolled out"):
        await controller.start(Plan("r2", "kws", 3, (100,), 0, 0.0), DEVICES, Meta)
    with pytest.raises(RolloutError, match="is running"):
        await controller.resume("r1")
    await controller.pause("r1")
    await controller.resume("r1")
    await controller.abort("r1")
    with pytest.raises(RolloutError, match="no rollout"):
        await controller.pause("nope")


async def blocked(controller, device, rollout, reason="expired: timestamp.json is expired"):
    detail = {"rollout": rollout, "reason": reason}
    await controller.on_event(Event(device, 0, "update_blocked", detail))


async def test_a_blocked_device_holds_the_stage_without_failing_it(fleet):
    """A device that cannot fetch or verify the update (stale metadata, a corrupted delta, an
    unreachable repository) is no verdict on the model: the canary waits for it, and the
    rollout goes on once it gets through."""
    controller, sent, clock, _ = fleet
    plan = Plan("r1", "kws", 2, (5, 100), 0, 0.0, blocked_deadline_s=600)
    await controller.start(plan, DEVICES, Meta)
    await controller.tick()
    ((device, command),) = sent
    assert command.retry_for_s == 600  # the device retries as long as the rollout waits
    for _ in range(5):
        await blocked(controller, device, "r1")
        clock.now += 60
        await controller.tick()
    rollout = await controller.store.get("r1")
    assert (rollout.state, rollout.stage) == (RolloutState.RUNNING, 0)
    assert controller.blocked == 1
    (progress,) = [p for p in await controller.store.progress("r1") if p.device == device]
    assert progress.state == DeviceState.BLOCKED and progress.detail.startswith("expired")
    assert progress.blocked_since == 1000.0  # the first block, however often it is reported
    assert len(sent) == 1  # a blocked device keeps its offer; it is not offered again
    await controller.on_event(Event(device, 0, "update_downloaded", {"rollout": "r1"}))
    (progress,) = [p for p in await controller.store.progress("r1") if p.device == device]
    assert progress.state == DeviceState.OFFERED and progress.blocked_since is None
    await controller.on_event(Event(device, 0, "update_committed", {"rollout": "r1"}))
    rollout = await run(controller, sent, clock, good=True)
    assert rollout.state == RolloutState.COMPLETED


async def test_a_device_blocked_past_the_deadline_counts_as_failed(fleet):
    controller, sent, clock, _ = fleet
    plan = Plan("r1", "kws", 2, (5, 100), 0, 0.0, blocked_deadline_s=600)
    await controller.start(plan, DEVICES, Meta)
    await controller.tick()
    ((device, _),) = sent
    await blocked(controller, device, "r1", "unreachable: connection refused")
    clock.now += 599
    await controller.tick()
    assert (await controller.store.get("r1")).state == RolloutState.RUNNING
    clock.now += 2
    await controller.tick()
    rollout = await controller.store.get("r1")
    assert rollout.state == RolloutState.PAUSED and "failure rate 100%" in rollout.reason
    (progress,) = [p for p in await controller.store.progress("r1") if p.device == device]
    assert progress.state == DeviceState.FAILED
    assert progress.detail == "blocked for more than 600 s: unreachable: connection refused"


async def test_a_blocked_device_whose_status_shows_the_commit_counts(fleet):
    controller, sent, _, _ = fleet
    await controller.start(Plan("r1", "kws", 2, (5, 100), 0, 0.0), DEVICES, Meta)
    await controller.tick()
    ((device, _),) = sent
    await blocked(controller, device, "r1")
    committed = ModelInfo("kws", 2, "0" * 64)
    await controller.on_status(
        Status(device, "online", 0, model=committed, update_state="COMMITTED")
    )
    states = {p.device: p.state for p in await controller.store.progress("r1")}
    assert states[device] == DeviceState.COMMITTED


async def test_a_database_from_before_the_schema_had_versions_is_migrated(tmp_path):
    import sqlite3

    from gateway.rollouts.store import SCHEMA_1
    from gateway.store import StoreError

    path = tmp_path / "rollouts.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_1)
    old.execute("INSERT INTO rollouts VALUES ('r0','kws',1,'[100]',0,0.05,0,'completed',0,'',1,2)")
    old.commit()
    old.close()
    async with RolloutStore(path) as store:
        (rollout,) = await store.list()
        assert rollout.plan.rollout_id == "r0" and rollout.plan.blocked_deadline_s == 3600
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3
    newer = sqlite3.connect(path)
    newer.execute("PRAGMA user_version=9")
    newer.close()
    with pytest.raises(StoreError, match="schema 9 is newer than this gateway's 3"):
        async with RolloutStore(path):
            pass


def test_refusals_map_to_http_statuses():
    from edgefleet.errors import UserError
    from gateway.rollouts.controller import RolloutConflict, UnknownRollout
    from gateway.rollouts.service import http_status

    assert http_status(UnknownRollout("no rollout 'x'")) == 404
    assert http_status(RolloutConflict("rollout 'x' is paused")) == 409
    assert http_status(UserError("stages must be whole percentages")) == 400


async def test_an_mcu_whose_status_runs_the_image_counts_as_committed(fleet):
    """An MCU's commit event missed while the gateway was down: its retained status lists the
    MCU running an image whose MCUboot major version is the release version."""
    from protocol.topics import McuInfo

    controller, sent, _, _ = fleet
    await controller.start(Plan("r1", "sensor", 2, (5, 100), 0, 0.0), DEVICES, None)
    await controller.tick()
    ((device, _),) = sent
    for info in (McuInfo("sensor", "2.0.0+0", "updating"), McuInfo("other", "2.0.0+0", "ok")):
        await controller.on_status(Status(device, "online", 0, mcus=(info,)))
        assert (await controller.store.device_state("r1", device)) == DeviceState.OFFERED
    await controller.on_status(
        Status(device, "online", 0, mcus=(McuInfo("sensor", "2.1.0+3", "ok"),))
    )
    assert (await controller.store.device_state("r1", device)) == DeviceState.COMMITTED


async def test_a_failure_acknowledged_before_a_crash_is_replayed_at_start(tmp_path):
    """The ingest writes the inventory in the transaction that acknowledges the event; a
    gateway killed before the rollout store took the verdict finds it there at start."""
    from gateway.config import RolloutsConfig
    from gateway.devices.inventory import Inventory, apply_event
    from gateway.rollouts.service import RolloutService
    from gateway.store import Store

    class Served:
        url = "http://127.0.0.1:1/"

    async def send(device, command):
        pass

    config = RolloutsConfig(database=tmp_path / "rollouts.db", tick_s=3600)
    async with RolloutStore(config.database) as store:
        controller = RolloutController(store, send, Served.url)
        await controller.start(Plan("r1", "kws", 2, (100,), 0, 0.5), DEVICES[:2], Meta)
        await controller.tick()
    verdicts = {
        "dev00": Event("dev00", 0, "update_rolled_back", {"rollout": "r1", "reason": "probation"}),
        "dev01": Event("dev01", 0, "update_blocked", {"rollout": "r1", "reason": "unreachable"}),
    }
    async with Store(tmp_path / "gateway.db") as db:
        inventory = await Inventory(db).open()
        inventory.replace(apply_event(None, event, 5.0) for event in verdicts.values())
        service = RolloutService(config, Served, send, inventory, lambda exc: None)
        async with service:
            progress = {p.device: p for p in await service.store.progress("r1")}
    assert progress["dev00"].state == DeviceState.FAILED
    assert progress["dev00"].detail == "probation"
    assert progress["dev01"].state == DeviceState.BLOCKED


async def test_an_offer_without_a_verdict_is_sent_again_and_the_first_offer_is_kept(fleet):
    """A device silent past ``reoffer_s`` is offered again, timed from the last offer, while
    ``offered_at`` keeps when its update began (what ``rollout status`` shows)."""
    controller, sent, clock, _ = fleet
    controller.reoffer_s = 10
    await controller.start(Plan("r1", "kws", 2, (100,), 0, 0.05), DEVICES[:1], Meta)
    for _ in range(25):
        await controller.tick()
        clock.now += 1
    assert len(sent) == 3  # at 1000, 1011 and 1022
    (progress,) = await controller.store.progress("r1")
    assert progress.offered_at == 1000.0 and progress.reoffered_at == 1022.0


async def test_a_large_stage_is_offered_at_the_configured_pace(tmp_path):
    sent = []

    async def send(device, command):
        sent.append(device)

    clock = Clock()
    devices = [DeviceFacts(f"dev{i:03d}") for i in range(300)]
    async with RolloutStore(tmp_path / "rollouts.db") as store:
        controller = RolloutController(store, send, "http://127.0.0.1:1/", clock, offers_per_s=100)
        await controller.start(Plan("r1", "kws", 2, (100,), 0, 0.05), devices, Meta)
        await controller.tick()
        assert len(sent) == 100 and controller.waiting == 200  # a second's worth at once
        clock.now += 0.5
        await controller.tick()
        assert len(sent) == 150 and controller.pace.wait_s() == pytest.approx(0.01)
        clock.now += 10  # an idle pace saves up no more than a second's worth
        await controller.tick()
        assert len(sent) == 250 and len(set(sent)) == 250 and controller.waiting == 50
