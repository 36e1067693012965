"""Drives staged rollouts: offers the update to each stage's devices over MQTT, records their
verdicts from events and retained status, and applies the pure decisions of ``rollout``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

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
)
from gateway.rollouts.store import Rollout, RolloutStore
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
REOFFER_S = 60.0


class RolloutError(ValueError):
    """A rollout command that cannot be carried out (unknown id, wrong state)."""


class RolloutController:
    def __init__(
        self,
        store: RolloutStore,
        send: Send,
        repository_url: str,
        clock: Callable[[], float] = time.time,
        reoffer_s: float = REOFFER_S,
    ):
        self.store = store
        self.send = send
        self.repository_url = repository_url
        self.clock = clock
        self.reoffer_s = reoffer_s

    def start(
        self,
        plan: Plan,
        devices: Sequence[DeviceFacts],
        meta: ModelMeta | None,
        skipped: Mapping[str, str] | None = None,
    ) -> Rollout:
        """``skipped``: devices left out before eligibility (offline, another model...) and why.
        ``meta`` is None for an MCU image: there is no hardware fit to judge here."""
        if self.store.get(plan.rollout_id):
            raise RolloutError(f"rollout {plan.rollout_id!r} exists already")
        busy = [r.plan.rollout_id for r in self.store.active() if r.plan.model == plan.model]
        if busy:
            raise RolloutError(f"model {plan.model!r} is already being rolled out by {busy[0]!r}")
        skipped = dict(skipped or {}) | {
            d.device: why for d in devices if meta and (why := eligibility(d, meta))
        }
        stages = assign_stages(plan, [d.device for d in devices if d.device not in skipped])
        self.store.create(plan, stages, skipped, self.clock())
        log.info(
            "rollout_started", rollout=plan.rollout_id, devices=len(stages), skipped=len(skipped)
        )
        return self.store.get(plan.rollout_id)

    def _command(self, plan: Plan, device: str, kind: str) -> Command:
        return Command(
            id=f"{plan.rollout_id}.{kind}.{device}",
            kind=kind,
            model=plan.model,
            version=plan.version if kind == "update" else None,
            rollout=plan.rollout_id,
            repository=self.repository_url if kind == "update" else None,
        )

    async def tick(self) -> None:
        """One pass over the running rollouts."""
        for rollout in self.store.active():
            if rollout.state == RolloutState.RUNNING:
                await self._advance(rollout)

    async def _advance(self, rollout: Rollout) -> None:
        plan, stage, now = rollout.plan, rollout.stage, self.clock()
        progress = self.store.progress(plan.rollout_id)
        due = [p.device for p in progress if p.stage <= stage and self._due(p, now)]
        if due:
            await self._offer(plan, due, now)
            progress = self.store.progress(plan.rollout_id)
        decision = decide(plan, stage, progress, now)
        if decision.action == Action.ADVANCE:
            self.store.set_state(
                plan.rollout_id, RolloutState.RUNNING, stage + 1, decision.reason, now
            )
            log.info("rollout_stage", rollout=plan.rollout_id, stage=stage + 1)
        elif decision.action == Action.PAUSE:
            self.store.set_state(plan.rollout_id, RolloutState.PAUSED, stage, decision.reason, now)
            log.warning("rollout_paused", rollout=plan.rollout_id, reason=decision.reason)
            for device in decision.rollback:
                await self.send(device, self._command(plan, device, "rollback"))
        elif decision.action == Action.COMPLETE:
            self.store.set_state(
                plan.rollout_id, RolloutState.COMPLETED, stage, decision.reason, now
            )
            log.info("rollout_completed", rollout=plan.rollout_id)

    def _due(self, p: Progress, now: float) -> bool:
        """Never offered, or offered so long ago that the offer may have been lost."""
        if p.state == DeviceState.PENDING:
            return True
        offered = p.state == DeviceState.OFFERED and p.offered_at is not None
        return offered and now - p.offered_at > self.reoffer_s

    async def _offer(self, plan: Plan, devices: list[str], now: float) -> None:
        """Send the offers side by side (each waits for its PUBACK) and record those the broker
        took; a failed one is raised after, and offered again at a later tick."""
        results = await asyncio.gather(
            *(self.send(d, self._command(plan, d, "update")) for d in devices),
            return_exceptions=True,
        )
        sent = [d for d, result in zip(devices, results, strict=True) if result is None]
        if sent:
            self.store.mark_offered(plan.rollout_id, sent, now)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def on_event(self, event: Event) -> None:
        rollout_id = event.detail.get("rollout")
        if not isinstance(rollout_id, str) or self.store.get(rollout_id) is None:
            return
        if event.kind == "update_committed":
            self.store.mark(rollout_id, event.device, DeviceState.COMMITTED, self.clock())
        elif event.kind in FAILURE_EVENTS:
            detail = str(event.detail.get("reason", event.kind))
            self.store.mark(rollout_id, event.device, DeviceState.FAILED, self.clock(), detail)

    def on_status(self, status: Status) -> None:
        """A retained status that shows the target committed counts even if the event was
        missed (the gateway was down when it was sent)."""
        if status.model is None or status.update_state != "COMMITTED":
            return
        self.on_committed(status.device, status.model.name, status.model.version)

    def on_committed(self, device: str, model: str, version: int) -> None:
        """The device runs ``model`` ``version`` committed: an offer of it has succeeded."""
        for rollout in self.store.active():
            plan = rollout.plan
            if (model, version) != (plan.model, plan.version):
                continue
            if self.store.device_state(plan.rollout_id, device) == DeviceState.OFFERED:
                self.store.mark(plan.rollout_id, device, DeviceState.COMMITTED, self.clock())

    def _require(self, rollout_id: str, *states: RolloutState) -> Rollout:
        rollout = self.store.get(rollout_id)
        if rollout is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        if rollout.state not in states:
            raise RolloutError(f"rollout {rollout_id!r} is {rollout.state}")
        return rollout

    def pause(self, rollout_id: str) -> None:
        rollout = self._require(rollout_id, RolloutState.RUNNING)
        self.store.set_state(
            rollout_id, RolloutState.PAUSED, rollout.stage, "paused by operator", self.clock()
        )

    def resume(self, rollout_id: str) -> None:
        rollout = self._require(rollout_id, RolloutState.PAUSED)
        self.store.set_state(
            rollout_id, RolloutState.RUNNING, rollout.stage, "resumed by operator", self.clock()
        )

    def abort(self, rollout_id: str) -> None:
        rollout = self._require(rollout_id, RolloutState.RUNNING, RolloutState.PAUSED)
        self.store.set_state(
            rollout_id, RolloutState.ABORTED, rollout.stage, "aborted by operator", self.clock()
        )
