"""Where batches go: the cloud over HTTPS, a cloud MQTT broker, a Parquet dataset, or a local
directory for offline sites and the demo.

A sink either returns (the batch is safe elsewhere: a 2xx, a PUBACK, or files durably renamed
into place), raises ``SinkError`` (not now: try again later) or ``Refused`` (never this batch:
the cloud answered a 4xx that is about the batch, or a line cannot be stored); the uplink
decides what happens next. Every sink is idempotent by the batch key: the cloud gets it as
``Idempotency-Key`` (an MQTT 5 user property on a broker), the directory and the dataset as the
file name. The cloud's answer is read only up to ``MAX_ANSWER_BYTES``, and as it came (no
decompression), so a peer cannot make the gateway hold more than that.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from pathlib import Path
from typing import Protocol

import aiohttp

from edgefleet import __version__
from edgefleet.fsio import atomic_write_bytes
from gateway.config import UplinkConfig
from gateway.telemetry.spool import Batch

MAX_RETRY_AFTER_S = 3600.0
MAX_ANSWER_BYTES = 4096
# 4xx answers retried like a 5xx: they are about the gateway's credentials or address (a token
# that expired would otherwise set the whole spool aside), or ask it to slow down.
RETRIED_4XX = frozenset({401, 403, 404, 407, 408, 429})


class SinkError(Exception):
    """The batch was not accepted; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.retry_after = reason, retry_after


class Refused(Exception):
    """The cloud will never take this batch as it is; ``answer`` is the start of its reply."""

    def __init__(self, status: int, answer: str):
        super().__init__(f"http_{status}: {answer}" if answer else f"http_{status}")
        self.status, self.answer = status, answer


def permanent(status: int) -> bool:
    """A 4xx that is about the batch (400, 413, 422...): sending it again cannot succeed."""
    return 400 <= status < 500 and status not in RETRIED_4XX


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the rest is never read (the connection closes)."""
    data = bytearray()
    while len(data) < limit:
        chunk = await response.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class Sink(Protocol):
    async def send(self, batch: Batch, body_gz: bytes) -> None: ...
    async def __aenter__(self) -> Sink: ...
    async def __aexit__(self, *exc) -> None: ...


def compress(batch: Batch, level: int) -> bytes:
    """gzip with no timestamp, so a retried batch is byte-for-byte the same."""
    return gzip.compress(batch.body, compresslevel=level, mtime=0)


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its delta-seconds form; dates are ignored."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_S)


class HttpSink:
    """POST gzip NDJSON with ``Idempotency-Key``; TLS is always verified (``ca_file`` adds a CA)."""

    def __init__(self, config: UplinkConfig, site: str):
        self.config, self.site = config, site
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._headers = {
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip",
            "User-Agent": f"edgefleet-gateway/{__version__}",
            "X-Edgefleet-Site": site,
        }
        if config.token_file is not None:
            self._headers["Authorization"] = f"Bearer {config.token_file.read_text().strip()}"

    async def __aenter__(self) -> HttpSink:
        if self.config.url.startswith("https:"):
            self._ssl = ssl.create_default_context(
                cafile=str(self.config.ca_file) if self.config.ca_file else None
            )
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.config.concurrency * 2)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def send(self, batch: Batch, body_gz: bytes) -> None:
        headers = self._headers | {
            "Idempotency-Key": batch.key,
            "X-Edgefleet-Records": str(batch.records),
        }
        try:
            async with self._session.post(
                self.config.url, data=body_gz, headers=headers, ssl=self._ssl
            ) as response:
                answer = await read_bounded(response, MAX_ANSWER_BYTES)
                if permanent(response.status):
                    text = answer.decode(errors="replace") or (response.reason or "")
                    raise Refused(response.status, text)
                if not 200 <= response.status < 300:
                    raise SinkError(
                        f"http_{response.status}",
                        response.reason or "",
                        retry_after(response.headers.get("Retry-After")),
                    )
        except TimeoutError:
            raise SinkError("timeout", f"no answer in {self.config.timeout_s}s") from None
        except aiohttp.ClientError as exc:
            raise SinkError("connection", str(exc)[:300]) from None
        except OSError as exc:
            raise SinkError("connection", str(exc)[:300]) from None


class DirSink:
    """Each batch becomes ``<directory>/<key>.ndjson.gz``, written atomically and durably."""

    def __init__(self, directory: Path):
        self.directory = directory

    async def __aenter__(self) -> DirSink:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    async def send(self, batch: Batch, body_gz: bytes) -> None:
        path = self.directory / f"{batch.key}.ndjson.gz"
        try:
            await asyncio.to_thread(atomic_write_bytes, path, body_gz)
        except OSError as exc:
            raise SinkError("disk", str(exc)[:300]) from None


class DatasetSink:
    """Each batch becomes Parquet files in the dataset (``protocol.dataset``), named by its key.
    A line the dataset cannot store is ``Refused`` as a 422 (halved down to the line, which
    becomes a dead letter); a disk that fails is a ``SinkError``."""

    def __init__(self, root: str, site: str | None = None):
        from protocol import dataset  # pyarrow: only gateways that write a dataset load it

        self.root, self.dataset, self.site = root, dataset, site

    async def __aenter__(self) -> DatasetSink:
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    def _write(self, batch: Batch) -> None:
        rows = self.dataset.parse_body(batch.body, self.site)
        self.dataset.write_batch(self.root, batch.key, rows)

    async def send(self, batch: Batch, body_gz: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, batch)
        except self.dataset.BadLine as exc:
            raise Refused(422, str(exc)[:MAX_ANSWER_BYTES]) from None
        except OSError as exc:
            raise SinkError("disk", str(exc)[:300]) from None


def make_sink(config: UplinkConfig, site: str) -> Sink:
    if config.sink == "http":
        return HttpSink(config, site)
    if config.sink == "dataset":
        return DatasetSink(config.dataset, site)
    if config.sink == "mqtt":
        from gateway.telemetry.mqtt_sink import MqttSink

        return MqttSink(config, site)
    return DirSink(config.directory)
