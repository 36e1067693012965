"""Update commands and the work they start: offers and rollbacks run as tasks beside inference,
an update that could not get through is tried again while its offer stands, and probation
evidence reaches the updater; after each step the model runner follows what is active."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine
from enum import StrEnum

import structlog

from agent.bad_input import BadInput
from agent.mcu.updater import McuUpdater
from agent.model_runner import ModelRunner
from agent.outbox import Outbox
from agent.updater.manager import Transition, UpdateManager
from agent.updater.probation import Outcome
from agent.updater.states import State
from agent.updater.store import Offer
from edgefleet.backoff import backoff_delay
from protocol.topics import Command

RESUME_DELAYS_S = (5.0, 300.0)  # an update that could not get through: first retry, longest
RETRY_FOR_S = 3600.0  # how long it is tried when the offer does not say (``retry_for_s``)

log = structlog.get_logger()


def report_transition(outbox: Outbox, transition: Transition) -> None:
    """Each state the updater enters: logged, its event sent, the status published again."""
    detail = transition.detail
    log.info(
        "update_transition",
        state=transition.state.value,
        target=detail.get("target"),
        rollout=detail.get("rollout"),
        reason=detail.get("reason"),
    )
    if transition.kind:
        outbox.event(transition.kind, **detail)
    outbox.notify()


class CommandAction(StrEnum):
    ACT = "act"
    IGNORE = "ignore"  # delivered again: already in hand
    REJECT = "reject"  # the gateway is told why


def decide(
    command: Command, configured: bool, job: str | None, state: State | None, offer: Offer | None
) -> tuple[CommandAction, str]:
    """What to do with a command, and why. MQTT delivers at least once, so an update already in
    hand is ignored, never rejected (the gateway counts rejections)."""
    if command.kind not in ("update", "rollback"):
        return CommandAction.REJECT, "not supported by this agent"
    if not configured:
        return (
            CommandAction.REJECT,
            "updates are not configured on this agent (no [update] section)",
        )
    rollout = command.rollout or ""
    if job is not None:
        if command.kind == "update" and rollout == job:
            return CommandAction.IGNORE, "this rollout is in progress"
        return CommandAction.REJECT, f"busy with rollout {job!r}"
    if command.kind == "rollback":
        if state == State.TRIAL:
            return CommandAction.ACT, ""
        return CommandAction.REJECT, f"no model on trial (update state {state})"
    if state == State.TRIAL:
        if offer == Offer(command.repository, f"{command.model}/{command.version}.tflite", rollout):
            return CommandAction.IGNORE, "this rollout is on trial"
        return CommandAction.REJECT, f"busy: rollout {offer.rollout!r} is on trial"
    return CommandAction.ACT, ""


class UpdateDriver:
    """``async with UpdateDriver(...)``: update work runs in a task group of its own; leaving
    cancels it (a worker killed mid-update is resumed at the next start)."""

    def __init__(
        self,
        updates: UpdateManager | None,
        models: ModelRunner,
        mcus: McuUpdater | None,
        outbox: Outbox,
        bad_input: BadInput,
    ):
        self.updates, self.models, self.mcus, self.outbox = updates, models, mcus, outbox
        self.bad_input = bad_input
        self._job: str | None = None  # rollout of the update work in progress
        self._tasks: set[asyncio.Task] = set()
        self._group = asyncio.TaskGroup()

    async def __aenter__(self) -> UpdateDriver:
        await self._group.__aenter__()
        if self.updates is not None:
            self._spawn(self._probation(), "probation")
            if self.updates.interrupted:
                offer = self.updates.saved.offer
                self._start_job(offer.rollout if offer else "", self._resume())
        return self

    async def __aexit__(self, *exc) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._group.__aexit__(None, None, None)

    def _spawn(self, work: Coroutine, name: str) -> None:
        task = self._group.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the link hands over ----------------------------------------------------------

    def on_command(self, command: Command) -> None:
        log.info("command_received", id=command.id, kind=command.kind, rollout=command.rollout)
        self.bad_input.counts["commands"] += 1
        if self.mcus is not None and self.mcus.tracks(command):
            self.mcus.command(command)
            return
        updates = self.updates
        action, reason = decide(
            command,
            updates is not None,
            self._job,
            updates.state if updates else None,
            updates.saved.offer if updates else None,
        )
        rollout = command.rollout or ""
        if action == CommandAction.REJECT:
            self.outbox.event(
                "command_rejected",
                id=command.id,
                command=command.kind,
                rollout=rollout,
                reason=reason,
            )
        elif action == CommandAction.IGNORE:
            log.info("command_ignored", id=command.id, rollout=rollout, reason=reason)
        elif command.kind == "update":
            self._start_job(rollout, self._update(command))
        else:
            self._start_job(rollout, self._rollback())

    # -- the work ------------------------------------------------------------------------

    def _start_job(self, rollout: str, work: Coroutine) -> None:
        self._job = rollout
        self._spawn(self._supervise(rollout, work), "update")

    async def _supervise(self, rollout: str, work: Coroutine) -> None:
        """Update work that fails is reported; inference and the link carry on."""
        try:
            await work
        except Exception as exc:  # the daemon outlives a failed update step
            log.exception("update_failed", rollout=rollout)
            self.outbox.event("error", rollout=rollout, reason=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self._job = None

    async def _update(self, command: Command) -> None:
        target = f"{command.model}/{command.version}.tflite"
        offer = Offer(command.repository, target, command.rollout or "")
        state = await self.updates.offer(offer.repository, offer.target, offer.rollout)
        if self.updates.saved.offer != offer:  # another update was in hand
            held = self.updates.saved.offer
            self.outbox.event(
                "command_rejected",
                id=command.id,
                command="update",
                rollout=offer.rollout,
                reason=f"busy: an update to {held.target if held else '?'} is in state {state}",
            )
            return
        await self._drive(command.retry_for_s)

    async def _drive(self, retry_for_s: float | None = None) -> None:
        """Follow the updater to where it stopped. An update that could not get through (the
        repository unreachable, metadata stale or expired, a download that does not match,
        the worker died) is tried again, each time with a fresh refresh, with a growing delay,
        for ``retry_for_s`` (as long as the rollout waits for it), and then given up."""
        retry_for_s = RETRY_FOR_S if retry_for_s is None else retry_for_s
        deadline = time.monotonic() + retry_for_s
        attempt = 0
        while self.updates.interrupted:
            left = deadline - time.monotonic()
            if left <= 0:
                why = self.updates.blocked_reason or "no progress"
                await self.updates.give_up(f"blocked for more than {retry_for_s:g} s: {why}")
                break
            delay = backoff_delay(attempt, *RESUME_DELAYS_S, lambda: 0.5 + random.random() / 2)
            rollout = self.updates.saved.offer.rollout if self.updates.saved.offer else ""
            log.info("update_resume_later", rollout=rollout, delay_s=round(min(delay, left), 1))
            await asyncio.sleep(min(delay, left))
            attempt += 1
            await self.updates.resume()
        await self.models.follow()

    async def _resume(self) -> None:
        await self.updates.resume()
        await self._drive()

    async def _rollback(self) -> None:
        async with self.models.finishing:
            await self.updates.rollback("operator")
        await self.models.follow()

    async def _probation(self) -> None:
        """Hand probation evidence to the updater; on its verdict run what it says is active."""
        while True:
            observation = await self.models.observed.get()
            async with self.models.finishing:
                verdict = await self.updates.observe(observation)
            if verdict is not None and verdict.decision != Outcome.CONTINUE:
                log.info("probation_verdict", decision=verdict.decision.value, why=verdict.summary)
                await self.models.follow()

    async def stop(self) -> None:
        """Cancel the update work (its child process is killed, which the updater survives)."""
        for task in list(self._tasks):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
