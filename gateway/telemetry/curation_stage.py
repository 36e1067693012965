"""Curation as the ingest sees it: one call per device message inside the ingest's transaction
(rules, then summaries), and a loop that moves closed summary windows into the uplink spool.

Without a ``[curation]`` section there is no stage and every record is forwarded as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable

import structlog
from aiohttp import web

from gateway.store import Store, transaction
from gateway.telemetry.curation import Curated, Curator
from gateway.telemetry.curation_rules import CurationConfig
from gateway.telemetry.spool import UplinkSpool
from gateway.telemetry.summaries import Summaries

FLUSH_EVERY_S = 1.0

log = structlog.get_logger()


class CurationStage:
    """``async with CurationStage(...)``: summaries flush until the block ends."""

    def __init__(
        self,
        config: CurationConfig,
        store: Store,
        spool: UplinkSpool,
        on_spooled: Callable[[], None],
        on_failure: Callable[[BaseException], None],
        clock: Callable[[], float] = time.time,
    ):
        self.config, self.store, self.spool, self.on_spooled = config, store, spool, on_spooled
        self.on_failure = on_failure
        self.curator = Curator(config)
        self.summaries = Summaries(config.summary_window_s, spool.spool_id[:16])
        self.clock = clock
        self._task: asyncio.Task | None = None

    def apply_sync(
        self, conn: sqlite3.Connection, device: str, stream: str, records: list[tuple[dict, bytes]]
    ) -> Curated:
        """Curate one message's records; every record counts toward its summary."""
        curated = self.curator.apply_sync(conn, device, stream, records)
        data = [record for record, _ in records]
        self.summaries.add_sync(conn, device, stream, data, set(curated.dropped_rows))
        return curated

    def reload_sync(self, conn: sqlite3.Connection) -> None:
        """After a message's savepoint was rolled back: the accumulators as on disk."""
        self.summaries.load_sync(conn)

    def _flush_sync(self, conn: sqlite3.Connection, now_ms: int) -> int:
        def work() -> int:
            self.curator.prune_sync(conn, now_ms)
            return self.summaries.flush_sync(conn, self.spool, now_ms)

        return transaction(conn, work)

    async def flush(self, everything: bool = False) -> int:
        """Spool the summaries of closed windows (``everything``: of every window, closing
        those in progress early) now; returns how many."""
        now_ms = int(self.clock() * 1000)
        if everything:
            now_ms += 2 * self.summaries.window_ms
        count = await self.store.run(self._flush_sync, now_ms)
        if count:
            self.on_spooled()
        return count

    def routes(self) -> list[web.RouteDef]:
        async def flush(request: web.Request) -> web.Response:
            return web.json_response({"summaries": await self.flush(everything=True)})

        return [web.post("/v1/curation/flush", flush)]

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()

    async def __aenter__(self) -> CurationStage:
        await self.store.run(self.summaries.load_sync)
        self._task = asyncio.create_task(self._loop(), name="summaries")
        self._task.add_done_callback(self._done)
        return self

    def _done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.on_failure(task.exception())

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
