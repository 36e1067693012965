"""The cloud end of a simulated site: the reference receiver (``cloud.receiver``) on loopback,
writing the Parquet dataset under ``dataset_dir``, wrapped to count what arrives (each record id
kept once) and to fail on command: down for a while, or a share of requests answered with 500,
so the gateway's retries are exercised, or a share of batches refused for good (422, as a cloud
does with a batch its schema rejects) so the gateway's dead letters are."""

from __future__ import annotations

import json
import random
import secrets
from pathlib import Path

from aiohttp import web

from cloud.receiver import Receiver, ReceiverConfig
from protocol.dataset import Rows

MiB = 1024**2


def record_ids(rows: Rows, stream: str = "telemetry") -> set[tuple[str, str, int]]:
    """Ids of the rows of one stream (telemetry, samples or summaries: each its own id space)."""
    return {
        (row["dev"], row["boot"], row["seq"])
        for partition, part in rows.items()
        if partition.stream == stream
        for row in part
    }


class Cloud:
    """``async with Cloud(seed, dataset_dir) as cloud:`` serves ``cloud.url`` until the block
    ends; the gateway sends ``cloud.token_file``'s token."""

    def __init__(self, seed: int, dataset_dir: Path) -> None:
        self.dataset_dir = dataset_dir
        self.token_file = dataset_dir.parent / "cloud-token"
        self.ids: set[tuple[str, str, int]] = set()  # telemetry records
        self.sample_ids: set[tuple[str, str, int]] = set()
        self.summaries = 0  # summary records accepted, duplicates included
        # Telemetry ids the gateway's curation kept from the cloud, as its summaries list them.
        self.curated_ids: set[tuple[str, str, int]] = set()
        self.curated_unlisted = 0
        self.received = 0  # telemetry records in accepted requests, duplicates included
        self.refused_requests = 0
        self.aborted_requests = 0
        self.down = False
        self.error_rate = 0.0
        self.reject_rate = 0.0
        self.rejected_requests = 0
        self.rejected_ids: set[tuple[str, str, int]] = set()  # in batches refused for good
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @web.middleware
    async def _faults(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path == "/ingest" and (
            self.down or (self.error_rate and self._random.random() < self.error_rate)
        ):
            self.refused_requests += 1
            return web.Response(status=503 if self.down else 500, text="injected failure")
        try:
            return await handler(request)
        except ConnectionError:  # the gateway gave up waiting; it sends the batch again
            self.aborted_requests += 1
            return web.Response(status=499)

    def _screen(self, key: str, rows: Rows) -> web.Response | None:
        if self.reject_rate and self._random.random() < self.reject_rate:
            self.rejected_requests += 1
            self.rejected_ids |= record_ids(rows)
            return web.json_response({"error": "record schema rejected (injected)"}, status=422)
        return None

    def _accepted(self, key: str, rows: Rows) -> None:
        ids = record_ids(rows)
        self.ids |= ids
        self.received += len(ids)
        self.sample_ids |= record_ids(rows, "samples")
        for partition, part in rows.items():
            if partition.stream == "summaries":
                for row in part:
                    self._summary(json.loads(row["record"]))

    def _summary(self, record: dict) -> None:
        self.summaries += 1
        self.curated_unlisted += record.get("curated_out_unlisted", 0)
        for boot, ranges in record.get("curated_out", {}).get("telemetry", {}).items():
            for first, last in ranges:
                self.curated_ids.update((record["dev"], boot, s) for s in range(first, last + 1))

    async def __aenter__(self) -> Cloud:
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        self.token_file.write_text(token + "\n")
        config = ReceiverConfig(str(self.dataset_dir), token, 256 * MiB, 256 * MiB)
        app = Receiver(config, self._screen, self._accepted).app([self._faults])
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
