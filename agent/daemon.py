"""The agent daemon: composes spool, engine, source, pipeline and MQTT link, tells systemd how it
is doing, and stops in order on SIGTERM.

Shutdown order: stop the source and the pipeline (a chunk not yet in the spool was never a
record); end the MQTT session (retained offline status, DISCONNECT); release the engine; close
the spool (WAL checkpoint). A model that does not load is counted and reported, and the agent
stays up without inference so the device remains reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time

import numpy as np
import structlog

from agent.config import AgentConfig
from agent.drift import LiveDrift, Verdict, compatible
from agent.engine import Engine, EngineError
from agent.faults import Faults
from agent.link import Link
from agent.pipeline import ModelIdentity, Pipeline
from agent.sdnotify import Notifier
from agent.sources import ReplaySource, SerialSource, SourceError, SyntheticSource
from agent.spool import Spool, SpoolError
from edgefleet import __version__
from edgefleet.errors import UserError
from protocol.drift import feature_summary
from protocol.topics import (
    Command,
    DriftInfo,
    Event,
    ModelInfo,
    SpoolInfo,
    Status,
)

STOP_TIMEOUT_S = 5.0

log = structlog.get_logger()


def make_source(config: AgentConfig, shape: tuple[int, ...], faults: Faults):
    src, inf = config.source, config.inference
    if src.kind == "synthetic":
        return SyntheticSource(src, shape, inf.rate_hz, inf.max_chunk)
    if src.kind == "replay":
        return ReplaySource(src, shape, inf.rate_hz, inf.max_chunk, faults)
    return SerialSource(src, shape, inf.max_chunk, faults)


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.faults = Faults()
        self.notifier = Notifier()
        self.meta = config.model.meta
        self.engine: Engine | None = None
        self.model: ModelIdentity | None = None
        self.drift: LiveDrift | None = None
        self.pipeline: Pipeline | None = None
        self.spool: Spool | None = None
        self.link: Link | None = None
        self.health = "starting"
        self._stop = asyncio.Event()
        self._alarm = False

    def _now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def _event(self, kind: str, **detail) -> None:
        if self.link is not None:
            self.link.send_event(Event(self.config.device_id, self._now_ms(), kind, detail))

    def _load_engine(self) -> None:
        cfg = self.config.model
        try:
            engine = Engine(cfg.path, cfg.engine, cfg.threads)
        except EngineError as exc:
            self.faults.record("bad_model", str(exc), path=str(cfg.path))
            self.health = "model_error"
            self._event("model_error", path=str(cfg.path), reason=str(exc)[:500])
            return
        digest = hashlib.sha256(cfg.path.read_bytes()).hexdigest()
        name = self.meta.name if self.meta else cfg.name or cfg.path.stem
        version = self.meta.version if self.meta else cfg.version
        self.engine, self.model = engine, ModelIdentity(name, version, digest)
        features = feature_summary(np.zeros((1, *engine.sample_shape))).shape[1]
        reference = self.meta.drift if self.meta else None
        if reference is not None and not compatible(reference, features, engine.classes):
            log.warning("drift_reference_mismatch", features=features, classes=engine.classes)
            reference = None
        d = self.config.drift
        self.drift = LiveDrift(reference, features, engine.classes, d.window, d.psi_alarm, d.bins)
        self.health = "ok"
        log.info(
            "model_loaded",
            engine=engine.runtime,
            model=name,
            version=version,
            sha256=digest,
            input=engine.input.shape,
            dtype=engine.input.dtype,
            drift_reference=reference is not None,
        )
        self._event("model_loaded", model=name, version=version, engine=engine.runtime)

    def status(self) -> Status:
        spool = self.spool.stats
        link = self.link.stats if self.link else None
        verdict = self.drift.last if self.drift else None
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
            model=ModelInfo(self.model.name, self.model.version, self.model.sha256)
            if self.model
            else None,
            health=self.health,
            drift=DriftInfo(verdict.window, verdict.max_psi, verdict.alarm, verdict.compared)
            if verdict
            else None,
            spool=SpoolInfo(
                spool.depth, spool.bytes, spool.cap_bytes, spool.dropped, spool.produced
            ),
            counters=counters,
        )

    def _on_verdict(self, verdict: Verdict) -> None:
        """Status carries the latest window; it is published at once when the alarm changes."""
        if verdict.alarm != self._alarm:
            self._alarm = verdict.alarm
            kind = "drift_alarm" if verdict.alarm else "drift_cleared"
            log.warning(kind, max_psi=round(verdict.max_psi, 4), window=verdict.window)
            self._event(kind, max_psi=round(verdict.max_psi, 6), window=verdict.window)
            self.link.notify_status()

    def _on_unfit(self, count: int) -> None:
        for _ in range(count):
            self.faults.record("bad_output", "input or model output is not finite")

    def _on_command(self, command: Command) -> None:
        log.info("command_received", id=command.id, kind=command.kind)
        self.faults.counts["commands"] += 1
        self._event("command_rejected", id=command.id, reason="not supported by this agent")

    def _systemd_status(self) -> str:
        spool = self.spool.stats
        online = "online" if self.link and self.link.connected else "offline"
        return f"{self.health}, mqtt {online}, spool {spool.depth} records, {spool.dropped} dropped"

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_s
        while True:
            self.notifier.send(WATCHDOG="1", STATUS=self._systemd_status())
            await asyncio.sleep(interval / 2 if interval else 60.0)

    async def _infer(self) -> None:
        try:
            shape = self.engine.sample_shape
            async with make_source(self.config, shape, self.faults) as source:
                await self.pipeline.run(source)
            log.info("source_ended")
        except SourceError as exc:
            self.faults.record("bad_sensor", str(exc))
            self.health = "source_error"
            self.link.notify_status()

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
            self._load_engine()
            if self.engine:
                stack.callback(self.engine.close)
            return await self._serve()

    async def _serve(self) -> int:
        cfg = self.config
        if self.engine:
            self.pipeline = Pipeline(
                cfg.device_id,
                self.engine,
                self.spool,
                self.drift,
                self.model,
                cfg.inference,
                self._on_verdict,
                self._on_unfit,
            )
        link_task = asyncio.create_task(self.link.run(), name="link")
        infer_task = asyncio.create_task(self._infer(), name="infer") if self.pipeline else None
        watchdog_task = asyncio.create_task(self._watchdog(), name="watchdog")
        self.notifier.send(READY="1", STATUS=self._systemd_status())
        log.info("agent_ready", device=cfg.device_id, boot=self.spool.stats.boot)
        stop_task = asyncio.create_task(self._stop.wait())
        watched = {stop_task, link_task} | ({infer_task} if infer_task else set())
        code = 0
        while not self._stop.is_set():
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop_task}:
                watched.discard(task)
                if task.exception() is not None:
                    log.error("task_failed", task=task.get_name(), exc_info=task.exception())
                    code = 1
                    self._stop.set()
        log.info("agent_stopping")
        self.notifier.send(STOPPING="1", STATUS="stopping")
        await self._shutdown(infer_task, link_task, watchdog_task)
        return code

    async def _shutdown(self, infer_task, link_task, watchdog_task) -> None:
        for task in (infer_task, watchdog_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.link.stop()
        try:
            await asyncio.wait_for(link_task, STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("mqtt_stop_timed_out")


async def run(config: AgentConfig) -> int:
    return await Agent(config).run()
