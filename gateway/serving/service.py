"""The served repository inside the daemon: HTTP server, metadata renewal, imports and deltas.

Imports, delta signing and renewals each write a new snapshot and timestamp, so two at
once would sign the same version numbers over each other. They all run here, in threads, one at
a time under one lock; that is why ``edgefleet gateway import-release`` asks the running daemon
instead of writing the folder itself. Before the first import there is nothing to serve: the
HTTP server and the metadata keeper start when the repository appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from contextlib import AsyncExitStack
from pathlib import Path

import structlog
from aiohttp import web

from edgefleet.errors import UserError
from gateway.config import RepositoryConfig
from gateway.releases.repository import McuImage, Release, Repository
from gateway.serving.deltas import DeltaService, Offer
from gateway.serving.release_import import ImportResult, gateway_keys, import_release
from gateway.serving.renewal import Expiry, MetadataKeeper
from gateway.serving.server import RepositoryServer

log = structlog.get_logger()


class RepositoryService:
    def __init__(self, config: RepositoryConfig):
        self.config = config
        self.lock = threading.Lock()
        self.repo: Repository | None = None
        self.keeper: MetadataKeeper | None = None
        self._deltas: DeltaService | None = None
        self._stack = AsyncExitStack()
        self._serving = asyncio.Lock()
        self._watch_task: asyncio.Task | None = None
        self._seen: tuple | None = None  # stat of the watched timestamp.json last imported

    @property
    def url(self) -> str:
        return self.config.public_url

    def _open(self) -> Repository:
        return Repository(self.config.dir, gateway_keys(self.config.dir, self.config.keys))

    async def _serve(self) -> None:
        """Open the served repository and start serving it (once)."""
        async with self._serving:
            if self.repo is None:
                await self._start_serving()

    async def _start_serving(self) -> None:
        repo = await asyncio.to_thread(self._open)
        listen = self.config.listen
        keeper = MetadataKeeper(repo, self.lock, self.config.timestamp_check_s)
        await keeper.refresh_if_due()  # nothing expired is served, even once
        await self._stack.enter_async_context(
            RepositoryServer(self.config.dir, listen.host, listen.port, keeper.refresh_if_due)
        )
        self.keeper = await self._stack.enter_async_context(keeper)
        self.repo, self._deltas = repo, DeltaService(repo)
        log.info("repository_serving", listen=str(listen), url=self.url)

    def expiry(self) -> Expiry | None:
        """When the served metadata expires, seen now (None before the first import)."""
        if self.keeper is None or self.keeper.expiry is None:
            return None
        return Expiry(self.keeper.expiry.expires, self.keeper.clock())

    async def import_from(self, source: Path) -> ImportResult:
        def work() -> ImportResult:
            with self.lock:
                result = import_release(source, self.config.dir, self.config.keys)
                if self.repo is not None:
                    self.repo.reload()
                return result

        result = await asyncio.to_thread(work)
        await self._serve()
        log.info(
            "release_imported",
            source=str(source),
            created=result.created,
            new_targets=result.new_targets,
            targets_version=result.targets_version,
        )
        return result

    async def release(self, name: str, version: int) -> Release | McuImage | None:
        """The served model release or MCU image ``name`` ``version``."""
        if self.repo is None:
            return None

        def work() -> list[Release | McuImage]:
            with self.lock:
                self.repo.reload()
                return [*self.repo.releases(), *self.repo.images()]

        releases = await asyncio.to_thread(work)
        return next((r for r in releases if (r.name, r.version) == (name, version)), None)

    async def build_deltas(self, name: str, version: int, sources: Iterable[int]) -> list[Offer]:
        """Sign the deltas from each source version to ``version`` (built once, then cached)."""

        def work() -> list[Offer]:
            with self.lock:
                self.repo.reload()
                return [self._deltas.offer(name, version, source) for source in sorted(sources)]

        return await asyncio.to_thread(work)

    def _watched_stat(self) -> tuple | None:
        try:
            stat = (self.config.import_dir / "metadata" / "timestamp.json").stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    async def _watch(self) -> None:
        """Import from the watched folder whenever its timestamp.json changes."""
        failed: str | None = None
        while True:
            stat = await asyncio.to_thread(self._watched_stat)
            if stat is not None and stat != self._seen:
                try:
                    await self.import_from(self.config.import_dir)
                    self._seen, failed = stat, None
                # Catch-all: retried at the next change or poll; the watch must outlive any refusal
                except Exception as exc:  # noqa: BLE001
                    if str(exc) != failed:  # a folder being copied fails until it is whole
                        log.warning("watched_import_refused", error=str(exc))
                    failed = str(exc)
            await asyncio.sleep(self.config.import_poll_s)

    def routes(self) -> list[web.RouteDef]:
        async def do_import(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "the body is not JSON"}, status=400)
            source = body.get("source") if isinstance(body, dict) else None
            if not isinstance(source, str) or not Path(source).is_absolute():
                return web.json_response({"error": "source must be an absolute path"}, status=400)
            try:
                result = await self.import_from(Path(source))
            except UserError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(
                {
                    "created": result.created,
                    "new_targets": result.new_targets,
                    "targets_version": result.targets_version,
                    "url": self.url,
                }
            )

        return [web.post("/v1/repository/import", do_import)]

    async def __aenter__(self) -> RepositoryService:
        if (self.config.dir / "metadata").is_dir():
            await self._serve()
        else:
            log.info("repository_awaiting_first_import", dir=str(self.config.dir))
        if self.config.import_dir is not None:
            self._watch_task = asyncio.create_task(self._watch(), name="release-watch")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self._stack.aclose()
