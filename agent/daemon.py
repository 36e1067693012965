"""The agent daemon: composes spool, engine, source, pipeline, MQTT link, updater and the attached
MCUs, tells systemd how it is doing, and stops in order on SIGTERM.

Shutdown order: stop the source and the pipeline (a chunk not yet in the spool was never a
record) and any update work (its child process is killed, which the updater survives by design);
end the MQTT session (retained offline status, DISCONNECT); release the engines; close the
updater and the spool (WAL checkpoint). A model that does not load is counted and reported, and
the agent stays up without inference so the device remains reachable.

With an ``[update]`` section the model to run is the updater's active slot (the configured model
only until a first update), update commands run as tasks beside inference, and the daemon follows
the updater: on TRIAL it runs the candidate and shadows the incumbent, feeding probation; on
COMMITTED it drops the shadow; on ROLLED_BACK it runs the incumbent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import structlog

from agent.config import AgentConfig
from agent.drift import LiveDrift, Verdict, compatible
from agent.engine import Engine, EngineError
from agent.faults import Faults
from agent.link import Link
from agent.mcu.updater import McuUpdater
from agent.pipeline import ModelIdentity, Pipeline, Serving
from agent.sources import ReplaySource, SerialSource, SourceError, SyntheticSource
from agent.spool import Spool, SpoolError
from agent.updater.manager import Transition, UpdateConfig, UpdateManager
from agent.updater.probation import Decision, Observation
from agent.updater.states import State
from agent.updater.store import Offer
from edgefleet import __version__
from edgefleet.backoff import backoff_delay
from edgefleet.errors import UserError
from edgefleet.sdnotify import Notifier
from protocol.drift import feature_summary
from protocol.model_meta import MetadataError, ModelMeta
from protocol.topics import (
    Command,
    DriftInfo,
    Event,
    ModelInfo,
    SpoolInfo,
    Status,
)

STOP_TIMEOUT_S = 5.0
MAX_OBSERVATIONS = 1024  # probation evidence waiting for the updater; more is not needed
RESUME_DELAYS_S = (5.0, 300.0)  # an update that could not get through: first retry, longest
RETRY_FOR_S = 3600.0  # how long it is tried when the offer does not say (``retry_for_s``)

log = structlog.get_logger()


def make_source(config: AgentConfig, shape: tuple[int, ...], faults: Faults):
    src, inf = config.source, config.inference
    if src.kind == "synthetic":
        return SyntheticSource(src, shape, inf.rate_hz, inf.max_chunk)
    if src.kind == "replay":
        return ReplaySource(src, shape, inf.rate_hz, inf.max_chunk, faults)
    return SerialSource(src, shape, inf.max_chunk, faults)


def update_config(config: AgentConfig) -> UpdateConfig:
    """The updater keeps its TUF metadata, slots and state under ``state.dir/update``."""
    settings = config.update
    return UpdateConfig(
        state_dir=config.state_dir / "update",
        trusted_root=settings.trusted_root,
        engine=config.model.engine,
        worker_timeout_s=settings.worker_timeout_s,
        max_worker_crashes=settings.max_worker_crashes,
        max_model_bytes=settings.max_model_bytes,
        allowed_models=settings.allowed_models,
        probation=settings.probation,
    )


@dataclass(frozen=True)
class ModelChoice:
    """The model to run, what is known about it, and the incumbent to shadow during a trial."""

    path: Path
    name: str
    version: int
    sha256: str | None
    meta: ModelMeta | None
    shadow: Path | None = None


def swap_plan(running: Serving | None, wanted: ModelChoice) -> str:
    """``keep`` what runs, ``drop_shadow`` (the trial committed), or ``load`` another model."""
    if running is None or running.model.sha256 != wanted.sha256:
        return "load"
    if (running.shadow is not None) == (wanted.shadow is not None):
        return "keep"
    return "drop_shadow" if wanted.shadow is None else "load"


def decide(
    command: Command, configured: bool, job: str | None, state: State | None, offer: Offer | None
) -> tuple[str, str]:
    """``(act | ignore | reject, reason)`` for a command. MQTT delivers at least once, so an
    update already in hand is ignored, never rejected (the gateway counts rejections)."""
    if command.kind not in ("update", "rollback"):
        return "reject", "not supported by this agent"
    if not configured:
        return "reject", "updates are not configured on this agent (no [update] section)"
    rollout = command.rollout or ""
    if job is not None:
        if command.kind == "update" and rollout == job:
            return "ignore", "this rollout is in progress"
        return "reject", f"busy with rollout {job!r}"
    if command.kind == "rollback":
        if state == State.TRIAL:
            return "act", ""
        return "reject", f"no model on trial (update state {state})"
    if state == State.TRIAL:
        if offer == Offer(command.repository, f"{command.model}/{command.version}.tflite", rollout):
            return "ignore", "this rollout is on trial"
        return "reject", f"busy: rollout {offer.rollout!r} is on trial"
    return "act", ""


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.faults = Faults()
        self.notifier = Notifier()
        self.serving: Serving | None = None
        self.pipeline: Pipeline | None = None
        self.spool: Spool | None = None
        self.link: Link | None = None
        self.updates: UpdateManager | None = None
        self.mcus: McuUpdater | None = None
        self.health = "starting"
        self._stop = asyncio.Event()
        self._alarm = False
        self._infer_task: asyncio.Task | None = None
        self._jobs: asyncio.TaskGroup | None = None
        self._job: str | None = None  # rollout of the update work in progress
        self._job_tasks: set[asyncio.Task] = set()
        self._finishing = asyncio.Lock()  # one of probation, operator may end a trial
        self._switching = asyncio.Lock()
        self._observed: asyncio.Queue[Observation] = asyncio.Queue(MAX_OBSERVATIONS)

    def _now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def _event(self, kind: str, **detail) -> None:
        if self.link is not None:
            self.link.send_event(Event(self.config.device_id, self._now_ms(), kind, detail))

    # -- which model runs --------------------------------------------------------------------

    def _choose(self) -> ModelChoice:
        """The updater's active slot (shadowing the incumbent on trial), else the config's."""
        active = self.updates.active_model() if self.updates else None
        if active is None:
            cfg, meta = self.config.model, self.config.model.meta
            name = meta.name if meta else cfg.name or cfg.path.stem
            version = meta.version if meta else cfg.version
            return ModelChoice(cfg.path, name, version, file_sha256(cfg.path), meta)
        path, record = active
        trial = self.updates.trial_models()
        return ModelChoice(
            path,
            record["name"],
            record["version"],
            record["sha256"],
            self._signed_meta(record),
            trial[1] if trial else None,
        )

    def _signed_meta(self, record: dict) -> ModelMeta | None:
        """What the targets key signed about a slot's model (its drift reference)."""
        custom = self.updates.signed_meta(record["target"], record["sha256"])
        try:
            return ModelMeta.from_json(custom) if custom is not None else None
        except MetadataError as exc:
            log.warning("signed_meta_unusable", target=record["target"], error=str(exc))
            return None

    def _drift_for(self, engine: Engine, meta: ModelMeta | None) -> LiveDrift:
        features = feature_summary(np.zeros((1, *engine.sample_shape))).shape[1]
        reference = meta.drift if meta else None
        if reference is not None and not compatible(reference, features, engine.classes):
            log.warning("drift_reference_mismatch", features=features, classes=engine.classes)
            reference = None
        d = self.config.drift
        return LiveDrift(reference, features, engine.classes, d.window, d.psi_alarm, d.bins)

    def _open(self, choice: ModelChoice) -> Serving:
        """Load the chosen model (and the incumbent to shadow); blocking, runs in a thread."""
        cfg = self.config.model
        engine = Engine(choice.path, cfg.engine, cfg.threads)
        try:
            shadow = Engine(choice.shadow, cfg.engine, cfg.threads) if choice.shadow else None
        except EngineError:
            engine.close()
            raise
        model = ModelIdentity(choice.name, choice.version, file_sha256(choice.path) or "")
        pick = self.updates.should_shadow if shadow else None
        return Serving(engine, model, self._drift_for(engine, choice.meta), shadow, pick)

    async def _follow(self) -> None:
        """Run the model the updater says is active (one switch at a time)."""
        async with self._switching:
            while True:
                choice = self._choose()
                plan = swap_plan(self.serving, choice)
                if plan == "keep":
                    return
                if plan == "drop_shadow":
                    self._run(replace(self.serving, shadow=None, pick=None))
                    return
                try:
                    serving = await asyncio.to_thread(self._open, choice)
                except EngineError as exc:
                    if await self._reject_candidate(exc):
                        continue
                    self._model_error(choice.path, exc)
                    return
                self._loaded(serving, choice)
                self._run(serving)
                return

    async def _reject_candidate(self, exc: EngineError) -> bool:
        """A model on trial that does not load here (it passed the gate in the worker) is
        rolled back; returns whether it was."""
        if self.updates is None or self.updates.state != State.TRIAL:
            return False
        async with self._finishing:
            await self.updates.rollback(f"does not load in the agent: {exc}"[:500])
        return True

    def _model_error(self, path: Path, exc: EngineError) -> None:
        self.faults.record("bad_model", str(exc), path=str(path))
        self.health = "model_error"
        self._event("model_error", path=str(path), reason=str(exc)[:500])
        self.link.notify_status()

    def _loaded(self, serving: Serving, choice: ModelChoice) -> None:
        engine, model = serving.engine, serving.model
        log.info(
            "model_loaded",
            engine=engine.runtime,
            model=model.name,
            version=model.version,
            sha256=model.sha256,
            input=engine.input.shape,
            dtype=engine.input.dtype,
            drift_reference=serving.drift.reference is not None,
            shadow=str(choice.shadow) if choice.shadow else None,
        )
        self._event("model_loaded", model=model.name, version=model.version, engine=engine.runtime)

    def _run(self, serving: Serving) -> None:
        """Hand ``serving`` to the running pipeline, or start one (first model, new shape)."""
        self.serving, self.health = serving, "ok"
        if self.pipeline is not None and self.pipeline.sample_shape == serving.engine.sample_shape:
            self.pipeline.serve(serving)
        else:
            self._start_inference(serving)
        self.link.notify_status()

    def _start_inference(self, serving: Serving) -> None:
        before = (self._infer_task, self.pipeline) if self._infer_task else None
        if self._infer_task is not None:
            self._infer_task.cancel()  # chunks in flight were never records
        cfg = self.config
        self.pipeline = Pipeline(
            cfg.device_id,
            serving.engine,
            self.spool,
            serving.drift,
            serving.model,
            cfg.inference,
            self._on_verdict,
            self._on_unfit,
            self._on_observe,
        )
        self.pipeline.serve(serving)
        self._infer_task = asyncio.create_task(self._infer(self.pipeline, before), name="infer")

    # -- status and pipeline callbacks -------------------------------------------------------

    def status(self) -> Status:
        spool = self.spool.stats
        link = self.link.stats if self.link else None
        verdict = self.serving.drift.last if self.serving else None
        model = self.serving.model if self.serving else None
        counters: dict[str, int | float] = dict(self.faults.counts)
        if self.pipeline:
            counters["inferences"] = self.pipeline.stats.inferences
            counters["latency_us"] = round(self.pipeline.stats.latency_us_ewma, 1)
        if link:
            counters["records_sent"] = link.records
            counters["batches_sent"] = link.batches
            counters["events_dropped"] = link.events_dropped
            counters["connects"] = link.connects
        return Status(
            device=self.config.device_id,
            state="online",
            ts_ms=self._now_ms(),
            agent_version=__version__,
            boot=spool.boot,
            model=ModelInfo(model.name, model.version, model.sha256) if model else None,
            health=self.health,
            update_state=self.updates.state.value if self.updates else State.IDLE.value,
            slots=self.updates.status() if self.updates else {},
            drift=DriftInfo(verdict.window, verdict.max_psi, verdict.alarm, verdict.compared)
            if verdict
            else None,
            spool=SpoolInfo(
                spool.depth, spool.bytes, spool.cap_bytes, spool.dropped, spool.produced
            ),
            counters=counters,
            hardware_tags=self.config.hardware_tags,
            arena_bytes=self.config.arena_bytes,
            mcus=self.mcus.status() if self.mcus else (),
        )

    def _on_verdict(self, verdict: Verdict) -> None:
        """Status carries the latest window; it is published at once when the alarm changes."""
        if verdict.alarm != self._alarm:
            self._alarm = verdict.alarm
            kind = "drift_alarm" if verdict.alarm else "drift_cleared"
            log.warning(kind, max_psi=round(verdict.max_psi, 6), window=verdict.window)
            self._event(kind, max_psi=round(verdict.max_psi, 6), window=verdict.window)
            self.link.notify_status()

    def _on_unfit(self, count: int) -> None:
        for _ in range(count):
            self.faults.record("bad_output", "input or model output is not finite")

    def _on_observe(self, found: list[Observation]) -> None:
        """Probation evidence; when the updater falls behind, the surplus is left out (the
        verdict then rests on fewer inputs, never on wrong ones)."""
        for observation in found:
            if not self._observed.full():
                self._observed.put_nowait(observation)

    # -- updates -----------------------------------------------------------------------------

    def _on_transition(self, transition: Transition) -> None:
        detail = transition.detail
        log.info(
            "update_transition",
            state=transition.state.value,
            target=detail.get("target"),
            rollout=detail.get("rollout"),
            reason=detail.get("reason"),
        )
        if transition.kind:
            self._event(transition.kind, **detail)
        self.link.notify_status()

    def _on_command(self, command: Command) -> None:
        log.info("command_received", id=command.id, kind=command.kind, rollout=command.rollout)
        self.faults.counts["commands"] += 1
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
        if action == "reject":
            self._event(
                "command_rejected",
                id=command.id,
                command=command.kind,
                rollout=rollout,
                reason=reason,
            )
        elif action == "ignore":
            log.info("command_ignored", id=command.id, rollout=rollout, reason=reason)
        elif command.kind == "update":
            self._start_job(rollout, self._update(command))
        else:
            self._start_job(rollout, self._rollback())

    def _start_job(self, rollout: str, work: Coroutine) -> None:
        self._job = rollout
        task = self._jobs.create_task(self._supervise(rollout, work), name="update")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def _supervise(self, rollout: str, work: Coroutine) -> None:
        """Update work that fails is reported; inference and the link carry on."""
        try:
            await work
        except Exception as exc:  # the daemon outlives a failed update step
            log.exception("update_failed", rollout=rollout)
            self._event("error", rollout=rollout, reason=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self._job = None

    async def _update(self, command: Command) -> None:
        target = f"{command.model}/{command.version}.tflite"
        offer = Offer(command.repository, target, command.rollout or "")
        state = await self.updates.offer(offer.repository, offer.target, offer.rollout)
        if self.updates.saved.offer != offer:  # another update was in hand
            held = self.updates.saved.offer
            self._event(
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
        await self._follow()

    async def _resume(self) -> None:
        await self.updates.resume()
        await self._drive()

    async def _rollback(self) -> None:
        async with self._finishing:
            await self.updates.rollback("operator")
        await self._follow()

    async def _probation(self) -> None:
        """Hand probation evidence to the updater; on its verdict run what it says is active."""
        while True:
            observation = await self._observed.get()
            async with self._finishing:
                verdict = await self.updates.observe(observation)
            if verdict is not None and verdict.decision != Decision.CONTINUE:
                log.info("probation_verdict", decision=verdict.decision.value, why=verdict.summary)
                await self._follow()

    # -- life --------------------------------------------------------------------------------

    def _systemd_status(self) -> str:
        spool = self.spool.stats
        online = "online" if self.link and self.link.connected else "offline"
        return f"{self.health}, mqtt {online}, spool {spool.depth} records, {spool.dropped} dropped"

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_s
        while True:
            self.notifier.send(WATCHDOG="1", STATUS=self._systemd_status())
            await asyncio.sleep(interval / 2 if interval else 60.0)

    async def _infer(self, pipeline: Pipeline, before: tuple[asyncio.Task, Pipeline] | None):
        """Run ``pipeline`` on the source, after the one it replaces has stopped."""
        if before is not None:
            await asyncio.wait([before[0]])
            before[1].close()
        try:
            async with make_source(self.config, pipeline.sample_shape, self.faults) as source:
                await pipeline.run(source)
            log.info("source_ended")
        except SourceError as exc:
            self.faults.record("bad_sensor", str(exc))
            self.health = "source_error"
            self.link.notify_status()

    def _close_engines(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"state directory {self.config.state_dir}: {exc.strerror}") from None
        spool = Spool(self.config.state_dir / "spool.db", self.config.telemetry.spool_bytes)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.notifier.close)
            try:
                self.spool = await stack.enter_async_context(spool)
            except SpoolError as exc:
                raise UserError(str(exc)) from None
            cfg = self.config
            self.link = Link(
                cfg.device_id,
                cfg.mqtt,
                cfg.telemetry,
                self.spool,
                self.status,
                self._on_command,
                self.faults,
            )
            self._event("started", agent_version=__version__, boot=self.spool.stats.boot)
            if cfg.update is not None:
                manager = UpdateManager(update_config(cfg), self._on_transition)
                self.updates = await stack.enter_async_context(manager)
            if cfg.mcus:
                notify = self.link.notify_status
                mcus = McuUpdater(cfg.mcus, cfg.state_dir / "mcu", cfg.update, self._event, notify)
                self.mcus = await stack.enter_async_context(mcus)
            stack.callback(self._close_engines)
            return await self._serve()

    async def _serve(self) -> int:
        async with asyncio.TaskGroup() as jobs:
            self._jobs = jobs
            await self._follow()
            if self.updates is not None:
                self._job_tasks.add(jobs.create_task(self._probation(), name="probation"))
                if self.updates.interrupted:
                    offer = self.updates.saved.offer
                    self._start_job(offer.rollout if offer else "", self._resume())
            link_task = asyncio.create_task(self.link.run(), name="link")
            watchdog_task = asyncio.create_task(self._watchdog(), name="watchdog")
            self.notifier.send(READY="1", STATUS=self._systemd_status())
            log.info("agent_ready", device=self.config.device_id, boot=self.spool.stats.boot)
            code = await self._until_stopped(link_task)
            log.info("agent_stopping")
            self.notifier.send(STOPPING="1", STATUS="stopping")
            await self._shutdown(link_task, watchdog_task)
        return code

    async def _until_stopped(self, link_task: asyncio.Task) -> int:
        """Wait for SIGTERM; a task that fails stops the agent with exit code 1."""
        stop_task = asyncio.create_task(self._stop.wait())
        seen: set[asyncio.Task] = set()
        code = 0
        while not self._stop.is_set():
            watched = {link_task, self._infer_task} - seen - {None}
            done, _ = await asyncio.wait(watched | {stop_task}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop_task}:
                seen.add(task)
                if not task.cancelled() and task.exception() is not None:
                    log.error("task_failed", task=task.get_name(), exc_info=task.exception())
                    code = 1
                    self._stop.set()
        return code

    async def _shutdown(self, link_task, watchdog_task) -> None:
        for task in (self._infer_task, watchdog_task, *list(self._job_tasks)):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drain(link_task)
        self.link.stop()
        # Not wait_for: on timeout it waits for the cancelled task, which a wedged MQTT socket
        # can keep from ever ending.
        done, _ = await asyncio.wait({link_task}, timeout=STOP_TIMEOUT_S)
        if not done:
            log.warning("mqtt_stop_timed_out")
            link_task.cancel()

    async def _drain(self, link_task: asyncio.Task) -> None:
        """Give the link up to ``telemetry.drain_s`` to empty the spool."""
        if not self.config.telemetry.drain_s:
            return
        deadline = time.monotonic() + self.config.telemetry.drain_s
        self.link.flush()
        # The spool empties as the broker acknowledges: nothing signals it, so it is polled.
        while self.spool.stats.depth and not link_task.done() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.spool.stats.depth:
            log.warning("drain_incomplete", depth=self.spool.stats.depth)


async def run(config: AgentConfig) -> int:
    return await Agent(config).run()
