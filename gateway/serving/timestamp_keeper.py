"""Keeps the served timestamp fresh: devices refuse an expired one (a freeze), so the gateway
re-signs it with its online key well before it expires."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import structlog

from gateway.releases.repository import DEFAULT_EXPIRY, Repository

log = structlog.get_logger()


def renewal_due(expires: datetime, now: datetime, lifetime: timedelta) -> bool:
    """Renew once less than half of a lifetime is left."""
    return expires - now < lifetime / 2


class TimestampKeeper:
    """``async with TimestampKeeper(repo):`` checks every ``interval`` seconds."""

    def __init__(
        self,
        repo: Repository,
        interval: float = 600.0,
        lifetime: timedelta = DEFAULT_EXPIRY["timestamp"],
    ):
        self.repo = repo
        self.interval = interval
        self.lifetime = lifetime
        self.renewals = 0
        self._task: asyncio.Task | None = None

    def check(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        self.repo.reload()
        if not renewal_due(self.repo.timestamp.signed.expires, now, self.lifetime):
            return False
        self.repo.refresh_timestamp(self.lifetime)
        self.renewals += 1
        log.info(
            "timestamp_renewed",
            version=self.repo.timestamp.signed.version,
            expires=self.repo.timestamp.signed.expires.isoformat(),
        )
        return True

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.check)
            except Exception as exc:  # a failed renewal is retried; the old one is still valid
                log.error("timestamp_renewal_failed", error=str(exc))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> TimestampKeeper:
        self._task = asyncio.create_task(self._run(), name="timestamp-keeper")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
