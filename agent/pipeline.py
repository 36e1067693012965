"""Sensor chunks -> inference -> telemetry records -> spool.

Sequence numbers continue from the spool's; a record gets its number here and exists once the
spool committed it (a chunk in flight when the agent stops was never a record).

The model can be replaced while the pipeline runs (``serve``): the switch travels through the
same queues as the chunks, so every chunk is inferred, recorded and accounted for drift under the
model that was serving when it reached the engine, and no chunk is lost at the switch. During an
update's trial the serving model is the candidate, and the incumbent runs in shadow on the inputs
the updater picks; the results go to ``on_observe`` as probation evidence. While campaigns run
for the serving model, the records thread also selects the inputs they capture (``capture``);
without one it does nothing more.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from agent.capture import Capture
from agent.config import InferenceConfig
from agent.drift import DriftVerdict, LiveDrift
from agent.sources import Chunk
from agent.spool import Spool
from agent.threads import serial
from agent.updater.probation import Observation
from edgefleet.engine import Engine, Result
from protocol.drift import feature_summary
from protocol.telemetry import (
    MAX_RAW_BYTES,
    DriftWindow,
    Label,
    RawInput,
    Record,
    RecordId,
    encode_inferences,
)

log = structlog.get_logger()

IN_FLIGHT = 3  # chunks between source and spool: read ahead, inferring, being recorded


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: int
    sha256: str


@dataclass(frozen=True)
class Serving:
    """What runs: the engine, the identity its records carry, its drift statistics, and during
    a trial the incumbent to shadow on the inputs ``pick`` selects (called once per input)."""

    engine: Engine
    model: ModelIdentity
    drift: LiveDrift
    shadow: Engine | None = None
    pick: Callable[[], bool] | None = None


def retire(old: Serving, new: Serving) -> None:
    """Close the engines of ``old`` that ``new`` does not use (in the thread that ran them)."""
    for engine in (old.engine, old.shadow):
        if engine is not None and engine is not new.engine and engine is not new.shadow:
            engine.close()


@dataclass(frozen=True)
class Shadowed:
    """The incumbent's results on the inputs ``mask`` selects."""

    mask: np.ndarray
    result: Result | None


def observations(result: Result, valid: np.ndarray, shadow: Shadowed | None) -> list[Observation]:
    """Probation evidence from one chunk: the candidate against the incumbent on the shadowed
    inputs, the candidate alone on the others. An input that is fine but that the candidate
    scores as not finite is its error; inputs that are not finite say nothing about a model."""
    scores, ms = result.scores, result.latency_us / 1000
    ours = valid & np.isfinite(scores).all(axis=1)
    errors = int((valid & ~ours).sum())
    compared = np.zeros(len(scores), dtype=bool)
    found = []
    if shadow is not None and shadow.result is not None:
        rows = np.flatnonzero(shadow.mask)
        theirs = shadow.result
        usable = ours[rows] & np.isfinite(theirs.scores).all(axis=1)
        rows = rows[usable]
        compared[rows] = True
        if len(rows):
            found.append(
                Observation(
                    scores[rows],
                    tuple(ms[rows]),
                    theirs.scores[usable],
                    tuple(theirs.latency_us[usable] / 1000),
                )
            )
    alone = ours & ~compared
    if alone.any() or errors:
        found.append(Observation(scores[alone], tuple(ms[alone]), errors=errors))
    return found


async def in_thread(executor: Executor, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


@dataclass(frozen=True)
class Inferred:
    chunk: Chunk
    result: Result
    shadow: Shadowed | None


@dataclass(frozen=True)
class Told:
    """A label an application gave, to be recorded in order with the inferences; ``done``
    gets the new record's id once the spool has it."""

    target: str
    label: int
    labeller: str
    done: asyncio.Future


@dataclass
class PipelineStats:
    inferences: int = 0
    latency_us_ewma: float = 0.0


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best class indices and their scores, best first."""
    k = min(k, scores.shape[1])
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return index, np.take_along_axis(scores, index, axis=1)


def input_summaries(samples: np.ndarray) -> np.ndarray:
    """``[n, 4]``: mean, standard deviation, min and max of each sample, in passes that make no
    sample-sized temporaries (the engine thread runs meanwhile and shares the memory bus)."""
    flat = samples.reshape(len(samples), -1)
    size = flat.shape[1]
    mean = flat.sum(axis=1, dtype=np.float64) / size
    square = np.einsum("ij,ij->i", flat, flat, dtype=np.float64) / size
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return np.stack([mean, std, flat.min(axis=1), flat.max(axis=1)], axis=1)


def drift_body(model: ModelIdentity, verdict: DriftVerdict) -> DriftWindow:
    """The wire record of a drift window: the verdict's fields under the model that made it."""
    return DriftWindow(model=model.name, version=model.version, **vars(verdict))


class Pipeline:
    """Three overlapped stages: the source reads ahead; the engine thread takes chunks from a
    thread-safe inbox and only runs the model; a records thread summarises, accounts drift and
    encodes the previous chunk meanwhile. LiteRT's invoke and numpy release the GIL, so the
    stages run in parallel."""

    def __init__(
        self,
        device: str,
        engine: Engine,
        spool: Spool,
        drift: LiveDrift,
        model: ModelIdentity,
        config: InferenceConfig,
        on_verdict: Callable[[DriftVerdict], None],
        on_unfit: Callable[[int], None],
        on_observe: Callable[[list[Observation]], None] = lambda found: None,
        capture: Capture | None = None,
        drifting: Callable[[], bool] = lambda: False,
    ):
        self._device, self._spool, self._config = device, spool, config
        self.serving = Serving(engine, model, drift)  # what the engine thread is told to run
        self._recording = self.serving  # what the chunks being recorded were inferred with
        self._raw_every = config.raw_every
        raw_bytes = int(np.prod(engine.input.shape)) * np.dtype(engine.input.dtype).itemsize
        if self._raw_every and raw_bytes > MAX_RAW_BYTES:
            log.warning("raw_sampling_off", input_bytes=raw_bytes, limit=MAX_RAW_BYTES)
            self._raw_every = 0
        self._on_verdict, self._on_unfit, self._on_observe = on_verdict, on_unfit, on_observe
        self._capture, self._drifting = capture, drifting
        self._inbox: queue.SimpleQueue | None = None
        self._inferred: asyncio.Queue | None = None
        self.stats = PipelineStats()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.serving.engine.sample_shape

    def serve(self, serving: Serving) -> None:
        """Run ``serving`` from the next chunk on (same input shape). Chunks already handed to
        the engine finish, and are recorded, under the model that took them."""
        if serving.engine.sample_shape != self.sample_shape:
            raise ValueError("a model with another input shape needs a new pipeline")
        old, self.serving = self.serving, serving
        if self._inbox is not None:
            self._inbox.put(serving)
        else:
            self._recording = serving
            retire(old, serving)

    async def label(self, target: str, label: int, labeller: str) -> str:
        """Record a label as telemetry, under the model serving now; returns its record id.
        ``RuntimeError`` when the pipeline is not running."""
        if self._inferred is None:
            raise RuntimeError("inference is not running")
        done = asyncio.get_running_loop().create_future()
        self._inferred.put_nowait(Told(target, label, labeller, done))
        return await done

    def close(self) -> None:
        """Free the engines once the pipeline no longer runs."""
        for engine in (self.serving.engine, self.serving.shadow):
            if engine is not None:
                engine.close()

    async def run(self, source: AsyncIterator[Chunk]) -> None:
        loop = asyncio.get_running_loop()
        inbox: queue.SimpleQueue[Chunk | Serving | None] = queue.SimpleQueue()
        inferred: asyncio.Queue[Inferred | Serving | None] = asyncio.Queue()
        in_flight = asyncio.Semaphore(IN_FLIGHT)
        engine = ThreadPoolExecutor(1, thread_name_prefix="engine")
        records = serial("records")
        self._inbox, self._inferred = inbox, inferred
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(source, inbox, in_flight))
                group.create_task(
                    in_thread(engine, self._work, self.serving, inbox, loop, inferred)
                )
                group.create_task(self._record(inferred, records, in_flight))
        finally:
            self._inbox = self._inferred = None
            inbox.put(None)  # ends the engine's loop if the pipeline was cancelled
            engine.shutdown(wait=True)
            records.shutdown(wait=True)
            self._recording = self.serving

    async def _read(
        self, source: AsyncIterator[Chunk], inbox: queue.SimpleQueue, in_flight: asyncio.Semaphore
    ) -> None:
        """Read ahead (up to ``IN_FLIGHT`` chunks), so the engine never waits for the source."""
        async for chunk in source:
            await in_flight.acquire()
            inbox.put(chunk)
        inbox.put(None)

    def _work(self, serving: Serving, inbox: queue.SimpleQueue, loop, out: asyncio.Queue) -> None:
        """In the engine thread: take chunks straight from the inbox, without a round trip
        through the event loop between them. A ``Serving`` in the inbox switches models here,
        in order with the chunks, and is passed on so the records follow the same order."""
        while True:
            item = inbox.get()
            if isinstance(item, Serving):
                retire(serving, item)
                serving = item
            elif item is not None:
                item = Inferred(
                    item, serving.engine.infer(item.samples), self._shadow(serving, item)
                )
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:  # the loop is gone: the agent is exiting
                return
            if item is None:
                return

    @staticmethod
    def _shadow(serving: Serving, chunk: Chunk) -> Shadowed | None:
        """During a trial, the incumbent on the inputs the updater picks."""
        if serving.shadow is None:
            return None
        count = len(chunk.samples)
        mask = np.fromiter((serving.pick() for _ in range(count)), dtype=bool, count=count)
        result = serving.shadow.infer(chunk.samples[mask]) if mask.any() else None
        return Shadowed(mask, result)

    async def _record(
        self, inferred: asyncio.Queue, executor: Executor, in_flight: asyncio.Semaphore
    ) -> None:
        loop = asyncio.get_running_loop()
        boot = self._spool.stats.boot
        seq = self._spool.stats.next_seq
        while (item := await inferred.get()) is not None:
            if isinstance(item, Serving):
                seq = await self._close_window(self._recording, item, boot, seq)
                self._recording = item
                continue
            if isinstance(item, Told):
                seq = await self._told(item, boot, seq)
                continue
            chunk, result = item.chunk, item.result
            bodies, verdicts, unfit = await loop.run_in_executor(
                executor, self._build, chunk, result, boot, seq
            )
            if bodies:
                seq += len(bodies)
                await self._spool.append(bodies, seq)
            if unfit:
                self._on_unfit(unfit)
            if item.shadow is not None:
                self._on_observe(await loop.run_in_executor(executor, self._evidence, item))
            if self._capture is not None and self._capture.armed:
                await self._capture_from(item, executor)
            stats = self.stats
            stats.inferences += len(chunk.samples)
            stats.latency_us_ewma += 0.1 * (float(result.latency_us.mean()) - stats.latency_us_ewma)
            for verdict in verdicts:
                self._on_verdict(verdict)
            in_flight.release()

    async def _capture_from(self, item: Inferred, executor: Executor) -> None:
        """The inputs of this chunk the running campaigns select become samples."""
        capture, serving = self._capture, self._recording
        plan = await capture.prepare(serving.model.name, self._drifting())
        if plan is None:
            return
        shadow = item.shadow
        theirs = None
        if shadow is not None and shadow.result is not None:
            theirs = (shadow.mask, shadow.result.scores)
        picked = await asyncio.get_running_loop().run_in_executor(
            executor,
            capture.pick,
            plan,
            item.chunk.samples,
            item.chunk.ts_ms,
            item.result,
            serving.engine.input,
            (serving.model.name, serving.model.version),
            theirs,
        )
        if picked is not None:
            await capture.keep(picked)

    async def _close_window(self, old: Serving, new: Serving, boot: str, seq: int) -> int:
        """At a switch to another model, the window in progress is closed and recorded under
        the model that filled it (its inputs would otherwise count for nothing); returns the
        next sequence number."""
        if new.drift is old.drift or (verdict := old.drift.close()) is None:
            return seq
        record_id = RecordId(self._device, boot, seq)
        body = Record(record_id, time.time_ns() // 1_000_000, drift_body(old.model, verdict))
        await self._spool.append([body.encode()], seq + 1)
        return seq + 1

    async def _told(self, told: Told, boot: str, seq: int) -> int:
        """Record a label; returns the next sequence number."""
        model = self._recording.model
        body = Label(model.name, model.version, told.target, told.label, told.labeller)
        record_id = RecordId(self._device, boot, seq)
        await self._spool.append(
            [Record(record_id, time.time_ns() // 1_000_000, body).encode()], seq + 1
        )
        if not told.done.done():
            told.done.set_result(record_id.key)
        return seq + 1

    @staticmethod
    def _evidence(item: Inferred) -> list[Observation]:
        samples = item.chunk.samples
        valid = np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
        return observations(item.result, valid, item.shadow)

    def _build(
        self, chunk: Chunk, result: Result, boot: str, seq: int
    ) -> tuple[list[bytes], list[DriftVerdict], int]:
        """In the records thread: account drift and encode records numbered from ``seq``.
        Samples whose input or output is not finite make no record; their count is returned."""
        samples, scores = chunk.samples, result.scores
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are dropped below
            summaries = input_summaries(samples)
            features = feature_summary(samples)
        fit = np.isfinite(summaries).all(axis=1) & np.isfinite(scores).all(axis=1)
        unfit = len(samples) - int(fit.sum())
        if unfit:
            samples, scores, summaries, features = (
                a[fit] for a in (samples, scores, summaries, features)
            )
            latency, ts_ms = result.latency_us[fit], chunk.ts_ms[fit]
        else:
            latency, ts_ms = result.latency_us, chunk.ts_ms
        serving = self._recording
        verdicts = serving.drift.update(features, scores) if len(samples) else []
        classes, best = top_k(scores, self._config.top_k)
        top = [
            list(zip(c, s, strict=True))
            for c, s in zip(classes.tolist(), best.tolist(), strict=True)
        ]
        raw_every = self._raw_every
        raws = [
            self._raw(samples[i]) if raw_every and (seq + i) % raw_every == 0 else None
            for i in range(len(samples))
        ]
        model = serving.model
        bodies = encode_inferences(
            self._device,
            boot,
            seq,
            model.name,
            model.version,
            ts_ms.tolist(),
            top,
            latency.tolist(),
            summaries.tolist(),
            features.tolist(),
            raws,
        )
        now = int(chunk.ts_ms[-1])
        for verdict in verdicts:
            record_id = RecordId(self._device, boot, seq + len(bodies))
            bodies.append(Record(record_id, now, drift_body(model, verdict)).encode())
        return bodies, verdicts, unfit

    def _raw(self, sample: np.ndarray) -> RawInput:
        """The sample as the model's input tensor takes it (quantized for integer models)."""
        tensor = self._recording.engine.input.quantize(sample)
        data = tensor.astype(tensor.dtype.newbyteorder("<")).tobytes()
        return RawInput(tensor.dtype.name, tensor.shape, data)
