"""Store-and-forward to the sink: lease a batch from the spool when one is due, send it, and
delete it from the spool only after the sink accepted it.

``concurrency`` workers each own one batch at a time. A failed batch keeps its lease and is
retried by its worker with exponential backoff and full jitter (honouring ``Retry-After`` up to
the cap), re-read from the spool first in case the cap dropped some of its rows.

A batch the cloud refuses for good (``Refused``: a 4xx about the batch) is not retried, or it
would hold its worker forever. A 413 halves it, down to single records, and each part goes on
its own (named by the batch key and its place, so a retried part keeps its key); the parts still
refused are set aside as dead letters in the same transaction that removes the batch from the
spool. Nothing here deletes a record that the sink did not accept or that is not then a dead
letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import time
from collections.abc import Callable

import structlog

from edgefleet.backoff import backoff_delay
from gateway.config import UplinkConfig
from gateway.metrics import Metrics
from gateway.store import add_counter, transaction
from gateway.telemetry.dead_letters import DeadLetters, Letter
from gateway.telemetry.sinks import Refused, Sink, SinkError, compress
from gateway.telemetry.spool import CLOUD_BYTES, Batch, UplinkSpool, batch_due

log = structlog.get_logger()
IDLE_CHECK_S = 1.0


def retry_delay(
    attempt: int, base: float, cap: float, retry_after: float | None, rand: Callable[[], float]
) -> float:
    """The backoff, but never sooner than the server asked (within the cap)."""
    delay = backoff_delay(attempt, base, cap, rand)
    return max(delay, min(retry_after, cap)) if retry_after is not None else delay


def halves(part: Batch) -> list[Batch]:
    """Two parts of ``part`` by records (it holds at least two), each with its own key."""
    lines = part.body.split(b"\n")[:-1]
    middle = len(lines) // 2
    out = []
    for index, chunk in enumerate((lines[:middle], lines[middle:])):
        key = hashlib.sha256(f"{part.key}:{index}".encode()).hexdigest()[:40]
        body = b"\n".join(chunk) + b"\n"
        out.append(dataclasses.replace(part, records=len(chunk), body=body, key=key))
    return out


def refused_letter(part: Batch, refusal: Refused) -> Letter:
    data = part.body[:-1]  # as a spool row: records joined by newlines
    kind = f"http_{refusal.status}"
    return Letter("uplink", kind, "refused", refusal.answer, "", len(data), data, part.records)


class Uplink:
    """``async with Uplink(...)``: workers run until the block ends."""

    def __init__(
        self,
        config: UplinkConfig,
        spool: UplinkSpool,
        sink: Sink,
        dead_letters: DeadLetters,
        metrics: Metrics,
        on_failure: Callable[[BaseException], None],
    ):
        self.config, self.spool, self.sink, self.metrics = config, spool, sink, metrics
        self.dead_letters = dead_letters
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
        attempt = 0
        settled: dict[str, Refused | None] = {}  # part key -> its refusal, or None: accepted
        while batch is not None:
            try:
                refused = await self._send_parts(batch, settled)
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
                    "upload_failed",
                    reason=str(exc),
                    key=batch.key,
                    records=batch.records,
                    attempt=attempt,
                    retry_in=round(delay, 3),
                )
                attempt += 1
                await asyncio.sleep(delay)
                again = await self.spool.reread(batch)
                if again is not batch:  # rows were dropped: other parts, other keys
                    settled.clear()
                batch = again
                continue
            if refused:
                await self.spool.store.run(self._set_aside_sync, batch, refused)
            else:
                await self.spool.remove(batch)
            delivered = batch.records - sum(part.records for part, _ in refused)
            self.metrics.cloud_bytes.inc(len(batch.body) - sum(len(p.body) for p, _ in refused))
            self.metrics.uploaded_batches.inc()
            self.metrics.uploaded_records.inc(delivered)
            return

    async def _send_parts(
        self, batch: Batch, settled: dict[str, Refused | None]
    ) -> list[tuple[Batch, Refused]]:
        """Send ``batch``, halving it at a 413; the parts refused for good. A ``SinkError``
        (try later) leaves ``settled`` with what was already answered."""
        parts, refused = [batch], []
        while parts:
            part = parts.pop(0)
            if part.key not in settled:
                body = await asyncio.to_thread(compress, part, self.config.gzip_level)
                started = time.perf_counter()
                try:
                    await self.sink.send(part, body)
                    settled[part.key] = None
                    self.metrics.upload_seconds.observe(time.perf_counter() - started)
                except Refused as exc:
                    settled[part.key] = exc
                    self.metrics.refusals.labels(str(exc.status)).inc()
                    log.warning(
                        "cloud_refused_batch",
                        status=exc.status,
                        key=part.key,
                        records=part.records,
                        answer=exc.answer[:300],
                    )
            refusal = settled[part.key]
            if refusal is None:
                continue
            if refusal.status == 413 and part.records > 1:
                self.metrics.splits.inc()
                parts[:0] = halves(part)
            else:
                refused.append((part, refusal))
        return refused

    def _set_aside_sync(self, conn, batch: Batch, refused: list[tuple[Batch, Refused]]) -> None:
        """The batch leaves the spool and its refused parts become dead letters, atomically."""
        letters = [refused_letter(part, refusal) for part, refusal in refused]

        def work() -> None:
            self.spool.remove_sync(conn, batch)
            self.dead_letters.add_sync(conn, letters)
            refused_bytes = sum(len(part.body) for part, _ in refused)
            add_counter(conn, CLOUD_BYTES, len(batch.body) - refused_bytes)

        transaction(conn, work)
        log.warning(
            "records_dead_lettered",
            key=batch.key,
            records=sum(letter.records for letter in letters),
        )

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
