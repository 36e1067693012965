"""The reference receiver of the gateway's HTTPS sink: ``POST /ingest`` takes one batch (gzip
NDJSON) and writes it to the dataset under its ``Idempotency-Key``.

Answers, as the gateway's uplink reads them: 200 ``{"accepted": n}`` once the batch's files are
durable (a key sent again answers 200 again and rewrites the same files, so nothing is counted
twice); 401 for a missing or wrong bearer token (the gateway retries: credentials can be fixed);
400 for a bad key or encoding, 411 without a length, 413 for a body past the caps (the gateway
halves the batch), 422 naming the first line that is not a record: all of these write nothing.
503 when the dataset cannot be written (the gateway retries). Sizes are checked before the
bytes are held: the declared length against the compressed cap, then the inflated body, read
in chunks, against the decompressed cap (aiohttp inflates in bounded steps).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from protocol import dataset
from protocol.topics import SITE_PATTERN

log = structlog.get_logger()
MiB = 1024**2
READ_CHUNK = 256 * 1024

# Called with the batch's key and rows after they were checked and before they are written;
# an answer it returns is sent instead (the fleet simulator refuses batches this way).
Screen = Callable[[str, dataset.Rows], web.Response | None]
Accepted = Callable[[str, dataset.Rows], None]


@dataclass(frozen=True)
class ReceiverConfig:
    dataset: str  # a directory or a pyarrow filesystem URI
    token: str
    max_body_bytes: int = 64 * MiB  # inflated
    max_compressed_bytes: int = 64 * MiB


def error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(errors="replace"), token.encode()
    )


class Receiver:
    """``Receiver(config).app()``: the aiohttp application; ``screen`` and ``accepted`` let a
    wrapper watch or refuse batches without changing how they are checked and stored."""

    def __init__(
        self,
        config: ReceiverConfig,
        screen: Screen | None = None,
        accepted: Accepted | None = None,
    ):
        self.config, self.screen, self.accepted = config, screen, accepted

    def app(self, middlewares=()) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=list(middlewares)
        )
        app.router.add_post("/ingest", self.ingest)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _body(self, request: web.Request) -> bytes | web.Response:
        length = request.content_length
        if length is None:
            return error(411, "Content-Length is required")
        if length > self.config.max_compressed_bytes:
            return error(413, f"body of {length} bytes exceeds {self.config.max_compressed_bytes}")
        limit, body = self.config.max_body_bytes, bytearray()
        try:
            while chunk := await request.content.read(READ_CHUNK):
                body += chunk
                if len(body) > limit:
                    return error(413, f"inflated body exceeds {limit} bytes")
        except (HttpProcessingError, RequestPayloadError) as exc:
            return error(400, " ".join(f"body is not valid gzip: {exc}".split())[:300])
        return bytes(body)

    async def ingest(self, request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization", ""), self.config.token):
            return error(401, "missing or wrong bearer token")
        key = request.headers.get("Idempotency-Key", "")
        if dataset.KEY_PATTERN.fullmatch(key) is None:
            return error(400, "Idempotency-Key must be 40 lowercase hex characters")
        if request.headers.get("Content-Encoding", "").strip().lower() != "gzip":
            return error(400, "Content-Encoding must be gzip")
        site = request.headers.get("X-Edgefleet-Site")
        if site is not None and SITE_PATTERN.fullmatch(site) is None:
            return error(400, "X-Edgefleet-Site must be a site name ([A-Za-z0-9_-]{1,64})")
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        try:
            rows = await asyncio.to_thread(dataset.parse_body, body, site)
        except dataset.BadLine as exc:
            log.warning("batch_refused", key=key, line=exc.line, problem=exc.problem[:200])
            return error(422, str(exc)[:1000], line=exc.line)
        if self.screen is not None and (answer := self.screen(key, rows)) is not None:
            return answer
        try:
            await asyncio.to_thread(dataset.write_batch, self.config.dataset, key, rows)
        except OSError as exc:
            log.error("dataset_write_failed", key=key, error=str(exc)[:300])
            return error(503, "the dataset cannot be written now")
        count = sum(map(len, rows.values()))
        if self.accepted is not None:
            self.accepted(key, rows)
        log.debug("batch_stored", key=key, records=count, partitions=len(rows))
        return web.json_response({"accepted": count})
