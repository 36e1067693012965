"""Sensor chunks -> inference -> telemetry records -> spool.

Sequence numbers continue from the spool's; a record gets its number here and exists once the
spool committed it (a chunk in flight when the agent stops was never a record).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from agent.config import InferenceConfig
from agent.drift import LiveDrift, Verdict
from agent.engine import Engine, Result
from agent.sources import Chunk
from agent.spool import Spool
from protocol.drift import feature_summary
from protocol.telemetry import (
    MAX_RAW_BYTES,
    DriftWindow,
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


def drift_body(model: ModelIdentity, verdict: Verdict) -> DriftWindow:
    return DriftWindow(
        model=model.name,
        version=model.version,
        window=verdict.window,
        compared=verdict.compared,
        alarm=verdict.alarm,
        max_psi=verdict.max_psi,
        inputs_psi=verdict.inputs_psi,
        outputs_psi=verdict.outputs_psi,
        top1_psi=verdict.top1_psi,
        inputs=verdict.inputs,
        outputs=verdict.outputs,
        top1=verdict.top1,
    )


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
        on_verdict: Callable[[Verdict], None],
        on_unfit: Callable[[int], None],
    ):
        self._device, self._engine, self._spool, self._drift = device, engine, spool, drift
        self._model, self._config = model, config
        self._raw_every = config.raw_every
        raw_bytes = int(np.prod(engine.input.shape)) * np.dtype(engine.input.dtype).itemsize
        if self._raw_every and raw_bytes > MAX_RAW_BYTES:
            log.warning("raw_sampling_off", input_bytes=raw_bytes, limit=MAX_RAW_BYTES)
            self._raw_every = 0
        self._on_verdict, self._on_unfit = on_verdict, on_unfit
        self.stats = PipelineStats()

    async def run(self, source: AsyncIterator[Chunk]) -> None:
        loop = asyncio.get_running_loop()
        inbox: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        inferred: asyncio.Queue[tuple[Chunk, Result] | None] = asyncio.Queue()
        in_flight = asyncio.Semaphore(IN_FLIGHT)
        records = ThreadPoolExecutor(1, thread_name_prefix="records")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(source, inbox, in_flight))
                group.create_task(self._engine.call(self._work, inbox, loop, inferred))
                group.create_task(self._record(inferred, records, in_flight))
        finally:
            inbox.put(None)  # ends the engine's loop if the pipeline was cancelled
            records.shutdown(wait=True)

    async def _read(
        self, source: AsyncIterator[Chunk], inbox: queue.SimpleQueue, in_flight: asyncio.Semaphore
    ) -> None:
        """Read ahead (up to ``IN_FLIGHT`` chunks), so the engine never waits for the source."""
        async for chunk in source:
            await in_flight.acquire()
            inbox.put(chunk)
        inbox.put(None)

    def _work(self, inbox: queue.SimpleQueue, loop, out: asyncio.Queue) -> None:
        """In the engine thread: take chunks straight from the inbox, without a round trip
        through the event loop between them."""
        while True:
            chunk = inbox.get()
            item = None if chunk is None else (chunk, self._engine.infer(chunk.samples))
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:  # the loop is gone: the agent is exiting
                return
            if chunk is None:
                return

    async def _record(
        self, inferred: asyncio.Queue, executor: ThreadPoolExecutor, in_flight: asyncio.Semaphore
    ) -> None:
        loop = asyncio.get_running_loop()
        boot = self._spool.stats.boot
        seq = self._spool.stats.next_seq
        while (item := await inferred.get()) is not None:
            chunk, result = item
            bodies, verdicts, unfit = await loop.run_in_executor(
                executor, self._build, chunk, result, boot, seq
            )
            if bodies:
                seq += len(bodies)
                await self._spool.append(bodies, seq)
            if unfit:
                self._on_unfit(unfit)
            stats = self.stats
            stats.inferences += len(chunk.samples)
            stats.latency_us_ewma += 0.1 * (float(result.latency_us.mean()) - stats.latency_us_ewma)
            for verdict in verdicts:
                self._on_verdict(verdict)
            in_flight.release()

    def _build(
        self, chunk: Chunk, result: Result, boot: str, seq: int
    ) -> tuple[list[bytes], list[Verdict], int]:
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
        verdicts = self._drift.update(features, scores) if len(samples) else []
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
        model = self._model
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
        tensor = self._engine.input.quantize(sample)
        data = tensor.astype(tensor.dtype.newbyteorder("<")).tobytes()
        return RawInput(tensor.dtype.name, tensor.shape, data)
