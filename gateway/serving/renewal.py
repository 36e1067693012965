"""Keeps the served metadata fresh and its expiry visible.

Devices refuse expired metadata (a freeze attack looks exactly like that), so the gateway
re-signs every online role (timestamp, snapshot, deltas) with its online keys once less than
half of the role's lifetime is left. The offline roles (root, targets) only the operator can
renew (``edgefleet release renew``); the keeper warns in the log, the metrics and ``gateway
status`` while there is still time to do it.

Renewal is checked on a timer and, so that a clock that jumped forward (a device's first NTP
answer, a gateway restored from a snapshot) never lets a device see an expired role, whenever
a device asks for ``timestamp.json`` after the next renewal came due.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from gateway.releases.repository import DEFAULT_EXPIRY, ONLINE_ROLES, Repository

log = structlog.get_logger()

OFFLINE_WARNING = timedelta(days=14)
WARNING_REPEAT = timedelta(hours=6)


def renewal_at(expires: datetime, lifetime: timedelta) -> datetime:
    """When a role is renewed: once less than half of its lifetime is left."""
    return expires - lifetime / 2


def renewal_due(expires: datetime, now: datetime, lifetime: timedelta) -> bool:
    return now > renewal_at(expires, lifetime)


@dataclass(frozen=True)
class Expiry:
    """When each role of the served metadata expires, seen at ``now``."""

    expires: dict[str, datetime]
    now: datetime

    def seconds_left(self, role: str) -> float:
        return (self.expires[role] - self.now).total_seconds()

    def warnings(self) -> list[str]:
        """A line per offline role that expires within 14 days (or has expired)."""
        lines = []
        for role in ("root", "targets"):
            left = self.expires[role] - self.now
            if left < OFFLINE_WARNING:
                when = f"in {left.days} days" if left > timedelta(0) else "already"
                lines.append(
                    f"{role} metadata expires {when} ({self.expires[role].isoformat()}); "
                    f"renew it with 'edgefleet release renew --role {role}' and import it"
                )
        return lines

    def to_json(self) -> dict:
        return {
            "roles": {
                role: {"expires": at.isoformat(), "seconds_left": round(self.seconds_left(role))}
                for role, at in self.expires.items()
            },
            "warnings": self.warnings(),
        }


class MetadataKeeper:
    """``async with MetadataKeeper(repo, lock):`` renews online roles every ``interval`` seconds.

    ``lock`` is the one every writer of the served repository holds, so a renewal never signs
    the same snapshot or timestamp version as an import or a new delta.
    """

    def __init__(
        self,
        repo: Repository,
        lock: threading.Lock,
        interval: float = 600.0,
        lifetimes: dict[str, timedelta] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.repo = repo
        self.lock = lock
        self.interval = interval
        self.lifetimes = {role: DEFAULT_EXPIRY[role] for role in ONLINE_ROLES} | (lifetimes or {})
        self.clock = clock
        self.renewals = 0
        self.expiry: Expiry | None = None
        self._due_at = datetime.min.replace(tzinfo=UTC)
        self._warned_at: datetime | None = None
        self._task: asyncio.Task | None = None

    def check(self) -> list[str]:
        """Renew what is due; returns the roles re-signed."""
        with self.lock:
            now = self.clock()
            self.repo.reload()
            expires = self.repo.expiries()
            due = [r for r in ONLINE_ROLES if renewal_due(expires[r], now, self.lifetimes[r])]
            renewed = self.repo.renew_online(due, self.lifetimes) if due else []
            self.expiry = Expiry(self.repo.expiries(), now)
            self._due_at = min(
                renewal_at(self.expiry.expires[r], self.lifetimes[r]) for r in ONLINE_ROLES
            )
        if renewed:
            self.renewals += 1
            log.info(
                "metadata_renewed",
                roles=renewed,
                expires={r: self.expiry.expires[r].isoformat() for r in renewed},
            )
        self._warn(now)
        return renewed

    def _warn(self, now: datetime) -> None:
        warnings = self.expiry.warnings() if self.expiry else []
        if not warnings or (self._warned_at and now - self._warned_at < WARNING_REPEAT):
            return
        self._warned_at = now
        for line in warnings:
            log.warning("offline_metadata_expiring", detail=line)

    async def refresh_if_due(self) -> None:
        """Renew before answering a device if the clock has passed the next renewal."""
        if self.clock() < self._due_at:
            return
        try:
            await asyncio.to_thread(self.check)
        except Exception as exc:  # noqa: BLE001 - serve what there is; the timer tries again
            log.error("metadata_renewal_failed", error=str(exc))
            self._due_at = self.clock() + timedelta(seconds=self.interval)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.check)
            # Catch-all: a failed renewal (keys, disk, signing) is retried; the old is valid
            except Exception as exc:  # noqa: BLE001
                log.error("metadata_renewal_failed", error=str(exc))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> MetadataKeeper:
        self._task = asyncio.create_task(self._run(), name="metadata-keeper")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
