"""Store-and-forward to the sink: lease a batch from the spool when one is due, send it, and
delete it from the spool only after the sink accepted it.

``concurrency`` workers each own one batch at a time. A failed batch keeps its lease and is
retried by its worker with exponential backoff and full jitter (honouring ``Retry-After`` up to
the cap), re-read from the spool first in case the cap dropped some of its rows. Nothing here
deletes a record that the sink did not accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import structlog

from gateway.config import UplinkConfig
from gateway.metrics import Metrics
from gateway.telemetry.sinks import Sink, SinkError, compress
from gateway.telemetry.spool import Batch, Spool, batch_due

log = structlog.get_logger()
IDLE_CHECK_S = 1.0


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    return rand() * min(cap, base * 2 ** min(attempt, 32))


def retry_delay(
    attempt: int, base: float, cap: float, retry_after: float | None, rand: Callable[[], float]
) -> float:
    """The backoff, but never sooner than the server asked (within the cap)."""
    delay = backoff_delay(attempt, base, cap, rand)
    return max(delay, min(retry_after, cap)) if retry_after is not None else delay


class Uplink:
    """``async with Uplink(...)``: workers run until the block ends."""

    def __init__(
        self,
        config: UplinkConfig,
        spool: Spool,
        sink: Sink,
        metrics: Metrics,
        on_failure: Callable[[BaseException], None],
    ):
        self.config, self.spool, self.sink, self.metrics = config, spool, sink, metrics
        self.on_failure = on_failure
        self.changed = asyncio.Event()  # set when records were spooled
        self._tasks: list[asyncio.Task] = []

    async def _wait_due(self) -> None:
        config, stats = self.config, self.spool.stats
        while True:
            age = self.spool.oldest_age()
            due = batch_due(
                stats.pending_records,
                stats.pending_bytes,
                age,
                config.batch_records,
                config.batch_bytes,
                config.batch_age_s,
            )
            if due:
                return
            timeout = IDLE_CHECK_S if age is None else max(0.0, config.batch_age_s - age)
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(timeout, IDLE_CHECK_S))

    async def _worker(self) -> None:
        while True:
            await self._wait_due()
            batch = await self.spool.lease(self.config.batch_records, self.config.batch_bytes)
            if batch is not None:
                await self._deliver(batch)

    async def _deliver(self, batch: Batch | None) -> None:
        attempt, compressed, body = 0, None, b""
        while batch is not None:
            if batch is not compressed:  # re-read unchanged: same bytes as last time
                body = await asyncio.to_thread(compress, batch, self.config.gzip_level)
                compressed = batch
            started = time.perf_counter()
            try:
                await self.sink.send(batch, body)
            except SinkError as exc:
                self.metrics.upload_failures.labels(exc.reason).inc()
                delay = retry_delay(
                    attempt,
                    self.config.backoff_base_s,
                    self.config.backoff_cap_s,
                    exc.retry_after,
                    random.random,
                )
                log.warning(
                    "upload failed",
                    reason=str(exc),
                    key=batch.key,
                    records=batch.records,
                    attempt=attempt,
                    retry_in=round(delay, 3),
                )
                attempt += 1
                await asyncio.sleep(delay)
                batch = await self.spool.reread(batch)
                continue
            self.metrics.upload_seconds.observe(time.perf_counter() - started)
            await self.spool.remove(batch)
            self.metrics.uploaded_batches.inc()
            self.metrics.uploaded_records.inc(batch.records)
            return

    def _done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.on_failure(task.exception())

    async def __aenter__(self) -> Uplink:
        for index in range(self.config.concurrency):
            task = asyncio.create_task(self._worker(), name=f"uplink-{index}")
            task.add_done_callback(self._done)
            self._tasks.append(task)
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
