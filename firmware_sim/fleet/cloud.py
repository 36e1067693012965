"""The cloud end of a simulated site: an HTTP ingest on loopback that takes the gateway's gzip
NDJSON uploads, counts records and keeps each record id once, and fails on command (down for a
while, or a share of requests answered with 500) so the gateway's retries are exercised, or
refuses a share of batches for good (422, as a cloud does with a batch its schema rejects) so
the gateway's dead letters are."""

from __future__ import annotations

import json
import random

from aiohttp import web


class Cloud:
    """``async with Cloud() as cloud:`` serves ``cloud.url`` until the block ends."""

    def __init__(self, seed: int = 0) -> None:
        self.ids: set[tuple[str, str, int]] = set()
        self.received = 0  # records in accepted requests, duplicates included
        self.refused_requests = 0
        self.aborted_requests = 0
        self.bad_lines = 0
        self.down = False
        self.error_rate = 0.0
        self.reject_rate = 0.0
        self.rejected_requests = 0
        self.rejected_ids: set[tuple[str, str, int]] = set()  # in batches refused for good
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _ingest(self, request: web.Request) -> web.Response:
        if self.down or (self.error_rate and self._random.random() < self.error_rate):
            self.refused_requests += 1
            return web.Response(status=503 if self.down else 500, text="injected failure")
        try:
            body = await request.read()  # aiohttp undoes Content-Encoding: gzip
        except ConnectionError:  # the gateway gave up waiting; it sends the batch again
            self.aborted_requests += 1
            return web.Response(status=499)
        ids = set()
        for line in body.splitlines():
            try:
                record = json.loads(line)
                ids.add((record["dev"], record["boot"], int(record["seq"])))
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1
        if self.reject_rate and self._random.random() < self.reject_rate:
            self.rejected_requests += 1
            self.rejected_ids |= ids
            return web.json_response({"error": "record schema rejected (injected)"}, status=422)
        self.ids |= ids
        self.received += len(ids)
        return web.json_response({"accepted": len(ids)})

    async def __aenter__(self) -> Cloud:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/ingest", self._ingest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/ingest"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    def unique_by_device(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device, _, _ in self.ids:
            counts[device] = counts.get(device, 0) + 1
        return counts
