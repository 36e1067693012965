"""The gateway's repository server: TUF metadata, models and deltas over HTTP.

Files are served by aiohttp's static handler, which answers ``Range`` requests, so a device
resumes an interrupted download where it stopped. Only ``metadata/`` and ``targets/`` are
reachable; the keys beside them never are. JSON files (TUF metadata, gate vectors) go out
gzip-compressed to a client that accepts it (``gzip.py``); models and deltas always as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from gateway.serving.compression import GzipCache

TIMESTAMP_PATH = "/metadata/timestamp.json"


def make_app(
    repo_dir: Path, before_timestamp: Callable[[], Awaitable[None]] | None = None
) -> web.Application:
    """``before_timestamp`` runs before ``timestamp.json`` is served: the start of every
    device's refresh, the moment to make sure what it is about to read has not expired."""

    @web.middleware
    async def fresh(request: web.Request, handler):
        if before_timestamp is not None and request.path == TIMESTAMP_PATH:
            await before_timestamp()
        return await handler(request)

    app = web.Application(middlewares=[fresh, GzipCache(Path(repo_dir)).middleware])
    app.router.add_static("/metadata", Path(repo_dir) / "metadata")
    app.router.add_static("/targets", Path(repo_dir) / "targets")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", healthz)
    return app


class RepositoryServer:
    """``async with RepositoryServer(dir, port=0) as server: server.url``."""

    def __init__(
        self,
        repo_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        before_timestamp: Callable[[], Awaitable[None]] | None = None,
    ):
        self.repo_dir = Path(repo_dir)
        self.before_timestamp = before_timestamp
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> RepositoryServer:
        self._runner = web.AppRunner(
            make_app(self.repo_dir, self.before_timestamp), access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
