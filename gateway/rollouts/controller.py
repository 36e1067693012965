"""Drives staged rollouts: offers the update to each stage's devices over MQTT, records their
verdicts from events and retained status, and applies the pure decisions of
``gateway.rollouts.decisions``. Every store call is awaited: the database works on its own
thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import structlog

from gateway.config import RolloutsConfig
from gateway.rollouts.decisions import (
    Action,
    DeviceFacts,
    DeviceState,
    Plan,
    Progress,
    RolloutState,
    assign_stages,
    decide,
    eligibility,
    overdue,
)
from gateway.rollouts.store import Rollout, RolloutStore
from protocol.mcu_image import parse_version
from protocol.model_meta import ModelMeta
from protocol.topics import Command, Event, Status

log = structlog.get_logger()

Send = Callable[[str, Command], Awaitable[None]]
FAILURE_EVENTS = (
    "update_rolled_back",
    "update_refused",
    "update_failed",
    "error",
    "command_rejected",
)
# An agent that cannot fetch or verify the update yet says so, and goes on trying.
BLOCKED_EVENTS = ("update_blocked",)
# Progress after a block: the device got past it.
UNBLOCKED_EVENTS = ("update_offered", "update_downloaded", "update_installed", "update_trial")


class RolloutError(ValueError):
    """A rollout command that cannot be carried out."""


class UnknownRollout(RolloutError):
    """No rollout has this id."""


class RolloutConflict(RolloutError):
    """The rollout exists but is in a state that does not allow the command."""


def shown_commits(
    model: str | None, version: int | None, update_state: str, mcus: Iterable[dict]
) -> list[tuple[str, int]]:
    """The (name, release version) pairs a device's status shows it runs for good: its model
    once committed, and each MCU that runs an image (an MCUboot major version is the release
    version, as ``release add-image`` checks)."""
    shown = [(model, version)] if model and version and update_state == "COMMITTED" else []
    for mcu in mcus:
        if mcu.get("state") == "ok" and mcu.get("version"):
            shown.append((mcu["name"], parse_version(mcu["version"])[0]))
    return shown


class OfferPace:
    """A token bucket of offers: ``per_s`` a second, at most one second's worth at once."""

    def __init__(self, per_s: float, clock: Callable[[], float]):
        self.per_s, self.clock = per_s, clock
        self._tokens, self._at = per_s, clock()

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` offers may go now."""
        if not self.per_s:
            return wanted
        now = self.clock()
        self._tokens = min(self.per_s, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def wait_s(self) -> float:
        """Until the next offer may go."""
        return max(1 - self._tokens, 0) / self.per_s if self.per_s else 0.0


class RolloutController:
    def __init__(
        self,
        store: RolloutStore,
        send: Send,
        repository_url: str,
        clock: Callable[[], float] = time.time,
        reoffer_s: float = RolloutsConfig.reoffer_s,
        offers_per_s: float = RolloutsConfig.offers_per_s,
    ):
        self.store = store
        self.send = send
        self.repository_url = repository_url
        self.clock = clock
        self.reoffer_s = reoffer_s
        self.pace = OfferPace(offers_per_s, clock)
        self.blocked = 0  # devices blocked in the running rollouts, as of the last tick
        self.waiting = 0  # offers due that the pace held back at the last tick

    async def start(
        self,
        plan: Plan,
        devices: Sequence[DeviceFacts],
        meta: ModelMeta | None,
        skipped: Mapping[str, str] | None = None,
    ) -> Rollout:
        """``skipped``: devices left out before eligibility (offline, another model...) and why.
        ``meta`` is None for an MCU image: there is no hardware fit to judge here."""
        if await self.store.get(plan.rollout_id):
            raise RolloutConflict(f"rollout {plan.rollout_id!r} exists already")
        active = await self.store.active()
        busy = [r.plan.rollout_id for r in active if r.plan.model == plan.model]
        if busy:
            raise RolloutConflict(
                f"model {plan.model!r} is already being rolled out by {busy[0]!r}"
            )
        skipped = dict(skipped or {}) | {
            d.device: why for d in devices if meta and (why := eligibility(d, meta))
        }
        stages = assign_stages(plan, [d.device for d in devices if d.device not in skipped])
        await self.store.create(plan, stages, skipped, self.clock())
        log.info(
            "rollout_started", rollout=plan.rollout_id, devices=len(stages), skipped=len(skipped)
        )
        return await self.store.get(plan.rollout_id)

    def _command(self, plan: Plan, device: str, kind: str) -> Command:
        update = kind == "update"
        return Command(
            id=f"{plan.rollout_id}.{kind}.{device}",
            kind=kind,
            model=plan.model,
            version=plan.version if update else None,
            rollout=plan.rollout_id,
            repository=self.repository_url if update else None,
            retry_for_s=round(plan.blocked_deadline_s) if update else None,
        )

    async def tick(self) -> None:
        """One pass over the running rollouts."""
        blocked = 0
        self.waiting = 0
        for rollout in await self.store.active():
            if rollout.state == RolloutState.RUNNING:
                blocked += await self._advance(rollout)
        self.blocked = blocked

    async def _advance(self, rollout: Rollout) -> int:
        """Move one rollout on; returns how many of its devices are blocked."""
        plan, stage, now = rollout.plan, rollout.stage, self.clock()
        progress = await self.store.progress(plan.rollout_id)
        due = [p.device for p in progress if p.stage <= stage and self._due(p, now)]
        allowed = self.pace.take(len(due))
        self.waiting += len(due) - allowed
        due = due[:allowed]
        late = overdue(plan, progress, now)
        for p in late:
            reason = f"blocked for more than {plan.blocked_deadline_s:g} s: {p.detail}"
            await self.store.mark(plan.rollout_id, p.device, DeviceState.FAILED, now, reason)
            log.warning("rollout_device_blocked_too_long", rollout=plan.rollout_id, device=p.device)
        if due:
            await self._offer(plan, due, now)
        if due or late:
            progress = await self.store.progress(plan.rollout_id)
        decision = decide(plan, stage, progress, now)
        if decision.action == Action.ADVANCE:
            await self.store.set_state(
                plan.rollout_id, RolloutState.RUNNING, stage + 1, decision.reason, now
            )
            log.info("rollout_stage", rollout=plan.rollout_id, stage=stage + 1)
            return await self._advance(await self.store.get(plan.rollout_id))  # offered now
        elif decision.action == Action.PAUSE:
            await self.store.set_state(
                plan.rollout_id, RolloutState.PAUSED, stage, decision.reason, now
            )
            log.warning("rollout_paused", rollout=plan.rollout_id, reason=decision.reason)
            for device in decision.rollback:
                await self.send(device, self._command(plan, device, "rollback"))
        elif decision.action == Action.COMPLETE:
            await self.store.set_state(
                plan.rollout_id, RolloutState.COMPLETED, stage, decision.reason, now
            )
            log.info("rollout_completed", rollout=plan.rollout_id)
        return sum(p.state == DeviceState.BLOCKED for p in progress)

    def _due(self, p: Progress, now: float) -> bool:
        """Never offered, or offered so long ago that the offer may have been lost. A blocked
        device is not offered again: it holds the offer and keeps trying."""
        if p.state == DeviceState.PENDING:
            return True
        last = p.last_offered_at
        return p.state == DeviceState.OFFERED and last is not None and now - last > self.reoffer_s

    async def _offer(self, plan: Plan, devices: list[str], now: float) -> None:
        """Send the offers side by side (each waits for its PUBACK) and record those the broker
        took; a failed one is raised after, and offered again at a later tick."""
        results = await asyncio.gather(
            *(self.send(d, self._command(plan, d, "update")) for d in devices),
            return_exceptions=True,
        )
        sent = [d for d, result in zip(devices, results, strict=True) if result is None]
        if sent:
            await self.store.mark_offered(plan.rollout_id, sent, now)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def on_event(self, event: Event) -> None:
        rollout_id = event.detail.get("rollout")
        if not isinstance(rollout_id, str) or await self.store.get(rollout_id) is None:
            return
        device, now = event.device, self.clock()
        reason = str(event.detail.get("reason", event.kind))
        if event.kind == "update_committed":
            await self.store.mark(rollout_id, device, DeviceState.COMMITTED, now)
        elif event.kind in FAILURE_EVENTS:
            await self.store.mark(rollout_id, device, DeviceState.FAILED, now, reason)
        elif event.kind in BLOCKED_EVENTS:
            if await self._state_in(rollout_id, device, DeviceState.OFFERED, DeviceState.BLOCKED):
                await self.store.mark(rollout_id, device, DeviceState.BLOCKED, now, reason)
                log.info("rollout_device_blocked", rollout=rollout_id, device=device, reason=reason)
        elif event.kind in UNBLOCKED_EVENTS and await self._state_in(
            rollout_id, device, DeviceState.BLOCKED
        ):
            await self.store.mark(rollout_id, device, DeviceState.OFFERED, now)

    async def _state_in(self, rollout_id: str, device: str, *states: DeviceState) -> bool:
        return await self.store.device_state(rollout_id, device) in states

    async def on_status(self, status: Status) -> None:
        """A retained status that shows the target committed counts even if the event was
        missed (the gateway was down when it was sent)."""
        model = status.model
        shown = shown_commits(
            model.name if model else None,
            model.version if model else None,
            status.update_state,
            [m.to_json() for m in status.mcus],
        )
        for name, version in shown:
            await self.on_committed(status.device, name, version)

    async def on_committed(self, device: str, model: str, version: int) -> None:
        """The device runs ``model`` ``version`` committed: an offer of it has succeeded."""
        for rollout in await self.store.active():
            plan = rollout.plan
            if (model, version) != (plan.model, plan.version):
                continue
            if await self._state_in(
                plan.rollout_id, device, DeviceState.OFFERED, DeviceState.BLOCKED
            ):
                await self.store.mark(plan.rollout_id, device, DeviceState.COMMITTED, self.clock())

    async def _require(self, rollout_id: str, *states: RolloutState) -> Rollout:
        rollout = await self.store.get(rollout_id)
        if rollout is None:
            raise UnknownRollout(f"no rollout {rollout_id!r}")
        if rollout.state not in states:
            raise RolloutConflict(f"rollout {rollout_id!r} is {rollout.state}")
        return rollout

    async def pause(self, rollout_id: str) -> None:
        rollout = await self._require(rollout_id, RolloutState.RUNNING)
        await self.store.set_state(
            rollout_id, RolloutState.PAUSED, rollout.stage, "paused by operator", self.clock()
        )

    async def resume(self, rollout_id: str) -> None:
        rollout = await self._require(rollout_id, RolloutState.PAUSED)
        await self.store.set_state(
            rollout_id, RolloutState.RUNNING, rollout.stage, "resumed by operator", self.clock()
        )

    async def abort(self, rollout_id: str) -> None:
        rollout = await self._require(rollout_id, RolloutState.RUNNING, RolloutState.PAUSED)
        await self.store.set_state(
            rollout_id, RolloutState.ABORTED, rollout.stage, "aborted by operator", self.clock()
        )
