"""Where the console's pages get their data.

Reads that need no lock come straight from the daemon's objects (the inventory, the spool and
dead-letter counters, the status the admin API serves). Rollouts and campaigns, whose services
serialize their work under locks of their own, are reached through the admin API itself, with
the operator's token, over its own listener: a button on a page does exactly what the same
command does from the CLI, checks and logs included, and the console adds no second path into
those services.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from gateway.config import Listen
from gateway.devices.inventory import Inventory
from gateway.telemetry.dead_letters import DeadLetterStats

TIMEOUT_S = 120.0  # a rollout start signs deltas first
MAX_ANSWER = 8 * 1024 * 1024


class AdminCallError(Exception):
    """The admin API refused (``status`` 4xx with its reason) or could not be reached."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


class AdminCalls:
    """Requests to this gateway's own admin API (an async context manager)."""

    def __init__(self, listen: Listen, token: bytes):
        self.listen, self.token = listen, token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminCalls:
        if self.listen.path is not None:
            connector = aiohttp.UnixConnector(path=str(self.listen.path))
            self._base = "http://localhost"
        else:
            connector = aiohttp.TCPConnector()
            self._base = f"http://{self.listen.host}:{self.listen.port}"
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
            headers={"Authorization": "Bearer " + self.token.decode("ascii")},
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer, or ``AdminCallError`` with the API's own one-line reason."""
        try:
            async with self._session.request(method, self._base + path, json=body) as answer:
                data = await answer.content.read(MAX_ANSWER)
                try:
                    value = json.loads(data)
                except ValueError:
                    value = {}
                if answer.status >= 400:
                    reason = value.get("error") if isinstance(value, dict) else None
                    status = answer.status if answer.status < 500 else 502
                    raise AdminCallError(str(reason or f"HTTP {answer.status}"), status)
                return value if isinstance(value, dict) else {}
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AdminCallError(f"the admin API did not answer: {exc!r}") from None


@dataclass(frozen=True)
class ConsoleData:
    """What the daemon hands the console."""

    inventory: Inventory
    status: Callable[[], Awaitable[dict]]  # as GET /v1/status answers
    dead_letters: Callable[[], DeadLetterStats]
    releases: Callable[[], Awaitable[list[dict]]] | None  # None without [repository]
    admin: AdminCalls

    def dead_letter_stats(self) -> dict:
        return dataclasses.asdict(self.dead_letters())


def served_releases(repository) -> Callable[[], Awaitable[list[dict]]]:
    """The served model releases and MCU images of a ``RepositoryService``, newest first,
    read under its writer lock (an import may be replacing the metadata)."""

    def work() -> list[dict]:
        repo = repository.repo
        if repo is None:
            return []
        with repository.lock:
            repo.reload()
            found = [*repo.releases(), *repo.images()]
        rows = []
        for r in found:
            evaluation = getattr(r.meta, "evaluation", None)
            rows.append(
                {
                    "name": r.name,
                    "version": r.version,
                    "kind": "mcu image" if hasattr(r.meta, "image_version") else "model",
                    "length": r.length,
                    "sha256": r.sha256,
                    "image_version": getattr(r.meta, "image_version", ""),
                    "evaluation": (
                        None
                        if evaluation is None
                        else {"passed": evaluation.passed, "accuracy": evaluation.accuracy}
                    ),
                }
            )
        return sorted(rows, key=lambda row: (row["name"], -row["version"]))

    async def releases() -> list[dict]:
        return await asyncio.to_thread(work)

    return releases
