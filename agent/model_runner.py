"""Which model runs, and the inference around it.

The model to run is the updater's active slot (the configured model only while no slot is
active): on TRIAL the candidate, shadowing the incumbent on a sample of inputs for probation; on
COMMITTED the candidate alone; on ROLLED_BACK the incumbent again. One switch happens at a time.
A model that does not load is counted and reported, and the agent stays up without inference so
the device remains reachable; a candidate on trial that does not load here is rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import structlog

from agent.bad_input import BadInput
from agent.capture import Capture
from agent.config import AgentConfig
from agent.drift import DriftVerdict, LiveDrift, compatible
from agent.outbox import Outbox
from agent.pipeline import ModelIdentity, Pipeline, Serving
from agent.sources import ReplaySource, SerialSource, SourceError, SyntheticSource
from agent.spool import Spool
from agent.updater.manager import UpdateManager
from agent.updater.probation import Observation
from agent.updater.states import State
from edgefleet.engine import Engine, EngineError
from protocol.drift import feature_summary
from protocol.model_meta import MetadataError, ModelMeta

MAX_OBSERVATIONS = 1024  # probation evidence waiting for the updater; more is not needed

log = structlog.get_logger()


class Swap(StrEnum):
    KEEP = "keep"  # what runs is what should run
    DROP_SHADOW = "drop_shadow"  # the trial committed: stop shadowing the incumbent
    LOAD = "load"  # another model, or the shadow changes


@dataclass(frozen=True)
class ModelChoice:
    """The model to run, what is known about it, and the incumbent to shadow during a trial."""

    path: Path
    name: str
    version: int
    sha256: str | None
    meta: ModelMeta | None
    shadow: Path | None = None


def swap_plan(running: Serving | None, wanted: ModelChoice) -> Swap:
    """What it takes to go from the model that runs to the one wanted."""
    if running is None or running.model.sha256 != wanted.sha256:
        return Swap.LOAD
    if (running.shadow is not None) == (wanted.shadow is not None):
        return Swap.KEEP
    return Swap.DROP_SHADOW if wanted.shadow is None else Swap.LOAD


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def make_source(config: AgentConfig, shape: tuple[int, ...], bad_input: BadInput):
    src, inf = config.source, config.inference
    if src.kind == "synthetic":
        return SyntheticSource(src, shape, inf.rate_hz, inf.max_chunk, bad_input)
    if src.kind == "replay":
        return ReplaySource(src, shape, inf.rate_hz, inf.max_chunk, bad_input)
    return SerialSource(src, shape, inf.max_chunk, bad_input)


class ModelRunner:
    """``async with ModelRunner(...) as models``: ``follow()`` runs what the updater says is
    active; leaving stops inference and releases the engines."""

    def __init__(
        self,
        config: AgentConfig,
        spool: Spool,
        bad_input: BadInput,
        outbox: Outbox,
        updates: UpdateManager | None,
        finishing: asyncio.Lock,
        capture: Capture | None = None,
    ):
        self.config, self.spool, self.bad_input, self.outbox = config, spool, bad_input, outbox
        self.updates, self.capture = updates, capture
        self.finishing = finishing  # held by whoever ends a trial (probation, operator, here)
        self.serving: Serving | None = None
        self.pipeline: Pipeline | None = None
        self.health = "starting"
        self.inference: asyncio.Task | None = None
        self.observed: asyncio.Queue[Observation] = asyncio.Queue(MAX_OBSERVATIONS)
        self._alarm = False
        self._switching = asyncio.Lock()

    async def __aenter__(self) -> ModelRunner:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
        if self.pipeline is not None:
            self.pipeline.close()

    async def stop(self) -> None:
        """Stop the source and the pipeline: a chunk not yet in the spool was never a record."""
        if self.inference is not None and not self.inference.done():
            self.inference.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.inference

    # -- which model -------------------------------------------------------------------------

    def choose(self) -> ModelChoice:
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

    async def follow(self) -> None:
        """Run the model the updater says is active (one switch at a time)."""
        async with self._switching:
            while True:
                choice = self.choose()
                plan = swap_plan(self.serving, choice)
                if plan == Swap.KEEP:
                    return
                if plan == Swap.DROP_SHADOW:
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

    async def _reject_candidate(self, exc: EngineError) -> bool:
        """A model on trial that does not load here (it passed the gate in the worker) is
        rolled back; returns whether it was."""
        if self.updates is None or self.updates.state != State.TRIAL:
            return False
        async with self.finishing:
            await self.updates.rollback(f"does not load in the agent: {exc}"[:500])
        return True

    def _model_error(self, path: Path, exc: EngineError) -> None:
        self.bad_input.record("bad_model", str(exc), path=str(path))
        self.health = "model_error"
        self.outbox.event("model_error", path=str(path), reason=str(exc)[:500])
        self.outbox.notify()

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
        self.outbox.event(
            "model_loaded", model=model.name, version=model.version, engine=engine.runtime
        )

    # -- inference ---------------------------------------------------------------------------

    def _run(self, serving: Serving) -> None:
        """Hand ``serving`` to the running pipeline, or start one (first model, new shape)."""
        self.serving, self.health = serving, "ok"
        if self.pipeline is not None and self.pipeline.sample_shape == serving.engine.sample_shape:
            self.pipeline.serve(serving)
        else:
            self._start_inference(serving)
        self.outbox.notify()

    def _start_inference(self, serving: Serving) -> None:
        before = (self.inference, self.pipeline) if self.inference else None
        if self.inference is not None:
            self.inference.cancel()  # chunks in flight were never records
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
            self.capture,
            lambda: self._alarm,
        )
        self.pipeline.serve(serving)
        self.inference = asyncio.create_task(self._infer(self.pipeline, before), name="infer")

    async def _infer(self, pipeline: Pipeline, before: tuple[asyncio.Task, Pipeline] | None):
        """Run ``pipeline`` on the source, after the one it replaces has stopped."""
        if before is not None:
            await asyncio.wait([before[0]])
            before[1].close()
        try:
            async with make_source(self.config, pipeline.sample_shape, self.bad_input) as source:
                await pipeline.run(source)
            log.info("source_ended")
        except SourceError as exc:
            self.bad_input.record("bad_sensor", str(exc))
            self.health = "source_error"
            self.outbox.notify()

    async def label(self, target: str, label: int, labeller: str) -> str:
        """Record an application's label as telemetry; its record id."""
        if self.pipeline is None:
            raise RuntimeError("inference is not running")
        return await self.pipeline.label(target, label, labeller)

    # -- pipeline callbacks ------------------------------------------------------------------

    def _on_verdict(self, verdict: DriftVerdict) -> None:
        """Status carries the latest window; it is published at once when the alarm changes."""
        if verdict.alarm != self._alarm:
            self._alarm = verdict.alarm
            kind = "drift_alarm" if verdict.alarm else "drift_cleared"
            log.warning(kind, max_psi=round(verdict.max_psi, 6), window=verdict.window)
            self.outbox.event(kind, max_psi=round(verdict.max_psi, 6), window=verdict.window)
            self.outbox.notify()

    def _on_unfit(self, count: int) -> None:
        for _ in range(count):
            self.bad_input.record("bad_output", "input or model output is not finite")

    def _on_observe(self, found: list[Observation]) -> None:
        """Probation evidence; when the updater falls behind, the surplus is left out (the
        verdict then rests on fewer inputs, never on wrong ones)."""
        for observation in found:
            if not self.observed.full():
                self.observed.put_nowait(observation)
