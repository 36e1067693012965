"""An attacker between the devices and the gateway's repository server: an HTTP relay on
loopback that, on command, answers with stale, expired or corrupted update files. The gateway's
own files stay untouched, as they would when the network, not the gateway, is compromised.

* ``replay``: the ``timestamp.json`` the fleet saw at the start, validly signed but old.
* ``expire``: a timestamp signed with the real online key but already expired (a freeze
  attack with a stolen, not yet rotated key); built by ``expired_timestamp``.
* ``corrupt_deltas``: one byte flipped in every delta file served.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
from aiohttp import web
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Timestamp

TIMESTAMP = "metadata/timestamp.json"
PASSED_HEADERS = (
    "Content-Type",
    "Content-Range",
    "Content-Encoding",
    "Vary",
    "Accept-Ranges",
    "Last-Modified",
    "ETag",
)
# What a device asks for is what the relay asks for (a compressed answer passes through as it
# came); without it, the relay asks for the bytes as they are.
ASKED_HEADERS = ("Range", "If-Range", "Accept-Encoding")


def expired_timestamp(current: bytes, signer: Signer) -> bytes:
    """``current`` with a higher version, expired an hour ago, signed by ``signer``."""
    md = Metadata[Timestamp].from_bytes(current)
    md.signed.version += 1
    md.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    md.signatures.clear()
    md.sign(signer)
    return md.to_bytes()


class RepositoryRelay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.replayed: bytes | None = None  # set: serve it as the timestamp
        self.corrupt_deltas = False
        self.tampered = 0
        self.served: dict[str, int] = {"metadata": 0, "targets": 0}  # bytes to devices
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path == TIMESTAMP and self.replayed is not None:
            self.tampered += 1
            return web.Response(body=self.replayed, content_type="application/json")
        headers = {"Accept-Encoding": "identity"}
        headers |= {k: v for k, v in request.headers.items() if k in ASKED_HEADERS}
        async with self._session.get(f"{self.upstream}/{path}", headers=headers) as upstream:
            body = await upstream.read()
            if self.corrupt_deltas and "/deltas/" in path and upstream.status < 300 and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.tampered += 1
            kind = path.split("/", 1)[0]
            if kind in self.served:
                self.served[kind] += len(body)
            passed = {k: v for k, v in upstream.headers.items() if k in PASSED_HEADERS}
            return web.Response(status=upstream.status, body=body, headers=passed)

    async def fetch(self, path: str) -> bytes:
        headers = {"Accept-Encoding": "identity"}
        async with self._session.get(f"{self.upstream}/{path}", headers=headers) as response:
            response.raise_for_status()
            return await response.read()

    async def __aenter__(self) -> RepositoryRelay:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_get("/{path:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()
        await self._session.close()
