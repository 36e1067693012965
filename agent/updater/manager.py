"""What the running agent calls to update its model: ``async with UpdateManager(...)``.

Entering recovers from whatever the last run left (settles the saved state, counts a restart in
TRIAL, rolls back an unreadable state). ``offer`` runs the update work in a child process
(``agent.updater.worker``) and relays every transition as it happens. While a new model is on
trial, the daemon runs it, shadows the incumbent on a sample of inputs, and hands the results
to ``observe``, which commits or rolls back when the evidence is in. Only small file operations
run in this process: no python-tuf, and no candidate model is loaded here before it passed the
health gate. (A process hosting many simulated devices runs the worker in a thread instead:
``runners.in_thread``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVarTuple

import structlog

from agent.updater.device import UpdaterDevice
from agent.updater.download import DEFAULT_MAX_MODEL_BYTES
from agent.updater.probation import (
    Counts,
    Observation,
    Outcome,
    ProbationLimits,
    ProbationVerdict,
    judge,
    record,
)
from agent.updater.runners import WorkerRunner, in_child
from agent.updater.slots import SlotRecord
from agent.updater.states import BEFORE_SWITCH, State, Step
from agent.updater.store import Saved
from agent.updater.worker import EXIT_BUSY, EXIT_NOT_ALLOWED, EXIT_TEMPFAIL
from protocol.model_meta import MetadataError, ModelMeta

log = structlog.get_logger()
_Args = TypeVarTuple("_Args")

# protocol.topics event kind for each state entered (others only change the status).
EVENT_KINDS = {
    State.OFFERED: "update_offered",
    State.VERIFIED: "update_downloaded",
    State.INSTALLED: "update_installed",
    State.TRIAL: "update_trial",
    State.COMMITTED: "update_committed",
    State.ROLLED_BACK: "update_rolled_back",
    State.REFUSED: "update_refused",
}


@dataclass(frozen=True)
class UpdateConfig:
    state_dir: Path
    trusted_root: Path
    engine: str = "auto"
    worker_timeout_s: float = 900.0
    max_worker_crashes: int = 3  # worker deaths in one update before it is given up
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    allowed_models: tuple[str, ...] = ()  # empty: the name of the model the device runs
    probation: ProbationLimits = field(default_factory=ProbationLimits)
    python: str = sys.executable


@dataclass(frozen=True)
class Transition:
    """One state entered; ``kind`` is the protocol event kind to publish (None: status only)."""

    state: State
    kind: str | None
    detail: dict[str, str | int | None] = field(default_factory=dict)


def transition(
    state: str, event: str | None, target: str | None, reason: str, boots: int, rollout: str
) -> Transition:
    """The gateway's rollout controller keys on ``rollout``, so every transition carries it."""
    entered = State(state)
    detail: dict[str, str | int | None] = {
        "update_state": entered.value,
        "event": event,
        "target": target,
        "rollout": rollout,
        "boots": boots,
    }
    if reason:
        detail["reason"] = reason[:512]
    return Transition(entered, EVENT_KINDS.get(entered), detail)


def blocked(state: str, target: str | None, reason: str, rollout: str) -> Transition:
    """The device cannot fetch or verify the offered update yet (``update_blocked``)."""
    detail: dict[str, str | int | None] = {
        "update_state": state,
        "target": target,
        "rollout": rollout,
        "reason": reason[:512],
    }
    return Transition(State(state), "update_blocked", detail)


def rollout_of(saved: Saved) -> str:
    return saved.offer.rollout if saved.offer else ""


class UpdateManager:
    def __init__(
        self,
        config: UpdateConfig,
        on_transition: Callable[[Transition], None] = lambda t: None,
        clock: Callable[[], float] = time.monotonic,
        runner: WorkerRunner | None = None,
    ):
        self.config = config
        self._runner = runner or in_child(config.python)
        self.on_transition = on_transition
        self.clock = clock
        self._pending: list[Transition] = []
        self.device = UpdaterDevice(config.state_dir, self._collect)
        self.saved = Saved()
        self._trial_started_s: float | None = None
        self._counts: Counts | None = None
        self._limits: ProbationLimits = config.probation
        self._shadow_tick = 0
        self._crashes = 0
        self.blocked_reason = ""  # why the last try of the update in hand could not get through

    def _collect(self, saved: Saved, event: Step | None) -> None:
        target = saved.offer.target if saved.offer else None
        self._pending.append(
            transition(
                saved.state,
                event and event.value,
                target,
                saved.reason,
                saved.boots,
                rollout_of(saved),
            )
        )

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            self.on_transition(item)

    async def _local(self, fn: Callable[[*_Args], Saved], *args: *_Args) -> Saved:
        """A device step (file operations with fsync) off the event loop; transitions are
        relayed on the loop's thread."""
        try:
            self.saved = await asyncio.to_thread(fn, *args)
        finally:
            self._flush()
        self._start_or_end_trial()
        return self.saved

    def _start_or_end_trial(self) -> None:
        """A trial's counts start when it starts (or when the agent restarts in it)."""
        if self.saved.state != State.TRIAL:
            self._trial_started_s, self._counts = None, None
        elif self._trial_started_s is None:
            self._trial_started_s = self.clock()

    # -- life ----------------------------------------------------------------------------

    async def __aenter__(self) -> UpdateManager:
        await self._local(self.device.boot, self.config.probation.max_trial_boots)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._trial_started_s, self._counts = None, None

    # -- what the daemon reads -----------------------------------------------------------

    @property
    def state(self) -> State:
        return self.saved.state

    @property
    def interrupted(self) -> bool:
        """An update stopped before its switch (restart, unreachable repository): ``resume``."""
        return self.saved.state in BEFORE_SWITCH

    def active_model(self) -> tuple[Path, dict[str, Any]] | None:
        """The model the daemon must run, and what was signed about it."""
        active = self.device.active()
        return (active[0], active[1].to_json()) if active else None

    def _signed_target(self, target: str) -> dict[str, Any] | None:
        """What the verified metadata the worker stored says about ``target`` (plain JSON: the
        daemon never loads python-tuf); None when it does not list it."""
        try:
            signed = json.loads((self.device.layout.tuf / "targets.json").read_bytes())["signed"]
            info = signed["targets"][target]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return info if isinstance(info, dict) else None

    def signed_meta(self, target: str, sha256: str) -> dict[str, Any] | None:
        """The ML metadata the targets key signed for ``target`` (drift reference, signature):
        from the verified metadata, or, once newer releases have pruned it from there, as it
        was kept beside the slot at install; None when neither names these bytes."""
        info = self._signed_target(target)
        if info is None or info.get("hashes", {}).get("sha256") != sha256:
            return self.device.slots.installed_meta(sha256)
        custom = info.get("custom")
        return custom if isinstance(custom, dict) else None

    async def adopt(self, path: Path, name: str, version: int) -> SlotRecord | None:
        """Make the configured model the incumbent of a device that has no active slot yet (set
        up the README's way, the model file named in its configuration), so its first update
        goes through trial and probation and can roll back. When the verified metadata lists
        that release, the file must be its signed bytes; otherwise it is not adopted (and
        None is returned), and the device runs it from its configured path as before."""
        if self.device.slots.pointer() is not None:
            return None
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            log.warning("configured_model_unreadable", path=str(path), error=exc.strerror)
            return None
        target = f"{name}/{version}.tflite"
        signed = self._signed_target(target)
        digest = hashlib.sha256(data).hexdigest()
        if signed is not None and signed.get("hashes", {}).get("sha256") != digest:
            log.error("configured_model_not_the_signed_one", path=str(path), target=target)
            return None
        record = await asyncio.to_thread(self.device.adopt, data, name, version, target)
        if record is None:  # a slot became active meanwhile
            return None
        log.info("configured_model_adopted", target=target, slot=record.slot, signed=bool(signed))
        return record

    def _trial_limits(self) -> ProbationLimits:
        """The device's probation limits, with the comparison limits the candidate's signed
        metadata states (the operator signed it knowing the two models should differ)."""
        candidate = self.saved.require_candidate()
        custom = self.signed_meta(candidate.target, candidate.sha256)
        try:
            meta = ModelMeta.from_json(custom) if custom is not None else None
        except MetadataError:
            meta = None
        if meta is None or (meta.probation_min_agreement, meta.probation_max_psi) == (None, None):
            return self.config.probation
        limits = self.config.probation
        agreement = meta.probation_min_agreement
        psi = meta.probation_max_psi
        log.info("probation_limits_signed", min_agreement=agreement, max_psi=psi)
        return dataclasses.replace(
            limits,
            min_agreement=limits.min_agreement if agreement is None else agreement,
            max_psi=limits.max_psi if psi is None else psi,
        )

    def trial_models(self) -> tuple[Path, Path] | None:
        """(candidate, incumbent) model paths while on trial: run the first, shadow the second."""
        if self.saved.state != State.TRIAL:
            return None
        slots = self.device.slots
        candidate, incumbent = self.saved.require_candidate(), self.saved.require_incumbent()
        return slots.path(candidate.slot), slots.path(incumbent.slot)

    def should_shadow(self) -> bool:
        """Whether to run the incumbent on the next input too (one in ``shadow_every``)."""
        if self._trial_started_s is None:
            return False
        self._shadow_tick += 1
        return (self._shadow_tick - 1) % self.config.probation.shadow_every == 0

    def status(self) -> dict[str, str | int | None]:
        """For the retained status: update state and the slots."""
        pointer = self.device.slots.pointer()
        return {
            "update_state": self.saved.state.value,
            "active_slot": pointer.active.slot if pointer else None,
            "active_version": pointer.active.version if pointer else None,
            "fallback_slot": pointer.previous.slot if pointer and pointer.previous else None,
            "trial_boots": self.saved.boots,
        }

    # -- what the daemon asks ------------------------------------------------------------

    async def offer(self, repository: str, target: str, rollout: str = "") -> State:
        """Take an update offer (the same offer again is the same update) and run it as far
        as the trial; returns the state it stopped in."""
        args = ["run", "--repository", repository, "--target", target, "--rollout", rollout]
        return await self._run_worker(args, rollout)

    async def resume(self) -> State:
        """Continue an interrupted update."""
        return await self._run_worker(["run"], rollout_of(self.saved))

    async def observe(self, observation: Observation) -> ProbationVerdict | None:
        """Count live results during the trial; commits or rolls back when ``judge`` decides.
        Returns the verdict (None when no trial is running)."""
        if self._trial_started_s is None:
            return None
        if self._counts is None:
            classes = observation.candidate_scores.shape[-1]  # also with no input scored
            self._counts = Counts(classes=int(classes), started_s=self._trial_started_s)
            self._limits = self._trial_limits()
        record(self._counts, self._limits, observation)
        verdict = judge(self._counts, self._limits, self.clock())
        if verdict.decision != Outcome.CONTINUE:
            commit = verdict.decision == Outcome.COMMIT
            reason = "" if commit else f"probation: {verdict.summary}"
            await self._local(self.device.finish, self.saved, commit, reason)
        return verdict

    async def give_up(self, reason: str) -> State:
        """End an update that could not get through in time; the running model stays."""
        if self.interrupted:
            await self._local(self.device.abort, self.saved, reason)
        return self.saved.state

    async def commit(self) -> State:
        """The operator's commit of a model on trial, without waiting for probation."""
        if self.saved.state == State.TRIAL:
            await self._local(self.device.finish, self.saved, True, "")
        return self.saved.state

    async def rollback(self, reason: str) -> State:
        """The operator's rollback of a model on trial."""
        if self.saved.state == State.TRIAL:
            await self._local(self.device.finish, self.saved, False, reason)
        return self.saved.state

    # -- the worker ----------------------------------------------------------------------

    async def _run_worker(self, args: list[str], rollout: str) -> State:
        command = [
            "--state-dir", str(self.config.state_dir),
            "--root", str(self.config.trusted_root),
            "--engine", self.config.engine,
            "--max-trial-boots", str(self.config.probation.max_trial_boots),
            "--max-model-bytes", str(self.config.max_model_bytes),
            *(f"--allow-model={name}" for name in self.config.allowed_models),
            *args,
        ]  # fmt: skip

        def relay(data: dict[str, Any]) -> None:
            if "state" not in data:
                return
            if "blocked" in data:  # the way to the update failed; it is tried again later
                self.blocked_reason = data["blocked"]
                self.on_transition(
                    blocked(data["state"], data["target"], self.blocked_reason, rollout)
                )
                return
            self.on_transition(
                transition(
                    data["state"],
                    data["event"],
                    data["target"],
                    data["reason"],
                    data["boots"],
                    rollout,
                )
            )

        returncode, stderr = await self._runner(command, relay, self.config.worker_timeout_s)
        await self._after_worker(returncode, stderr)
        return self.saved.state

    async def _after_worker(self, returncode: int | None, stderr: str) -> None:
        self.saved = await asyncio.to_thread(self.device.store.load)
        crashed = returncode not in (0, EXIT_TEMPFAIL, EXIT_BUSY, EXIT_NOT_ALLOWED)
        if returncode != 0:
            log.warning("update_worker_failed", returncode=returncode, stderr=stderr[-2000:])
        if crashed and self.interrupted:
            self._crashes += 1
            if self._crashes >= self.config.max_worker_crashes:
                self._crashes = 0
                why = f"update worker died {self.config.max_worker_crashes} times"
                await self._local(self.device.abort, self.saved, why)
        elif not self.interrupted:
            self._crashes = 0
        self._start_or_end_trial()
