"""Rollouts on disk (SQLite): a gateway restart carries on where it stopped.

The database follows the gateway store's rules: a versioned schema migrated in one transaction
per step, ``synchronous=FULL``, and every call on the store's own thread, so the event loop
never waits for an fsync.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.rollouts.decisions import DeviceState, Plan, Progress, RolloutState
from gateway.store import Store, transaction

# ``IF NOT EXISTS``: databases made before the schema had a version hold these tables already.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    stages TEXT NOT NULL,
    soak_s REAL NOT NULL,
    max_failure_rate REAL NOT NULL,
    auto_rollback INTEGER NOT NULL,
    state TEXT NOT NULL,
    stage INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    stage INTEGER NOT NULL,
    state TEXT NOT NULL,
    offered_at REAL,
    committed_at REAL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, device)
);
CREATE TABLE IF NOT EXISTS rollout_skipped (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (rollout_id, device)
);
"""
# Devices held up by transport or freshness problems, and how long a rollout waits for them.
SCHEMA_2 = """
ALTER TABLE rollouts ADD COLUMN blocked_deadline_s REAL NOT NULL DEFAULT 3600;
ALTER TABLE rollout_devices ADD COLUMN blocked_since REAL;
"""
# ``offered_at`` stays the first offer's time (where a device's update began); an offer sent
# again because no verdict came is timed by ``reoffered_at``.
SCHEMA_3 = """
ALTER TABLE rollout_devices ADD COLUMN reoffered_at REAL;
"""
MIGRATIONS = (SCHEMA_1, SCHEMA_2, SCHEMA_3)
ROLLOUT_COLUMNS = (
    "id, model, version, stages, soak_s, max_failure_rate, auto_rollback, state, stage, reason, "
    "created_at, updated_at, blocked_deadline_s"
)


@dataclass(frozen=True)
class Rollout:
    plan: Plan
    state: RolloutState
    stage: int
    reason: str
    created_at: float
    updated_at: float


class RolloutStore:
    """``async with RolloutStore(path) as store``; every method runs on the database thread."""

    def __init__(self, path: Path):
        self._store = Store(path, MIGRATIONS)
        # Every rollout by id, oldest first: read on every status and event a fleet sends, so
        # kept in memory; this store is the only writer, and it updates both together.
        self._rollouts: dict[str, Rollout] = {}

    async def __aenter__(self) -> RolloutStore:
        await self._store.__aenter__()
        rows = await self._store.run(
            lambda db: db.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at"
            ).fetchall()
        )
        self._rollouts = {rollout.plan.rollout_id: rollout for rollout in map(_rollout, rows)}
        return self

    async def __aexit__(self, *exc) -> None:
        await self._store.__aexit__(*exc)

    async def create(
        self, plan: Plan, stages: dict[str, int], skipped: dict[str, str], now: float
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    plan.rollout_id,
                    plan.model,
                    plan.version,
                    json.dumps(plan.stages),
                    plan.soak_s,
                    plan.max_failure_rate,
                    int(plan.auto_rollback),
                    RolloutState.RUNNING,
                    0,
                    "",
                    now,
                    now,
                    plan.blocked_deadline_s,
                ),
            )
            db.executemany(
                "INSERT INTO rollout_devices (rollout_id, device, stage, state) VALUES (?,?,?,?)",
                [(plan.rollout_id, d, s, DeviceState.PENDING) for d, s in stages.items()],
            )
            db.executemany(
                "INSERT INTO rollout_skipped VALUES (?,?,?)",
                [(plan.rollout_id, d, r) for d, r in skipped.items()],
            )

        await self._write(work)
        self._rollouts[plan.rollout_id] = Rollout(plan, RolloutState.RUNNING, 0, "", now, now)

    async def get(self, rollout_id: str) -> Rollout | None:
        return self._rollouts.get(rollout_id)

    async def list(self) -> list[Rollout]:
        return list(self._rollouts.values())  # loaded oldest first, each new one added last

    async def active(self) -> list[Rollout]:
        active = (RolloutState.RUNNING, RolloutState.PAUSED)
        return [r for r in await self.list() if r.state in active]

    async def progress(self, rollout_id: str) -> list[Progress]:
        def work(db: sqlite3.Connection) -> list[Progress]:
            rows = db.execute(
                "SELECT device, stage, state, committed_at, offered_at, detail, blocked_since, "
                "reoffered_at "
                "FROM rollout_devices WHERE rollout_id = ?",
                (rollout_id,),
            ).fetchall()
            return [Progress(d, s, DeviceState(st), *rest) for d, s, st, *rest in rows]

        return await self._store.run(work)

    async def device_state(self, rollout_id: str, device: str) -> DeviceState | None:
        def work(db: sqlite3.Connection) -> DeviceState | None:
            row = db.execute(
                "SELECT state FROM rollout_devices WHERE rollout_id = ? AND device = ?",
                (rollout_id, device),
            ).fetchone()
            return DeviceState(row[0]) if row else None

        return await self._store.run(work)

    async def skipped(self, rollout_id: str) -> dict[str, str]:
        def work(db: sqlite3.Connection) -> dict[str, str]:
            rows = db.execute(
                "SELECT device, reason FROM rollout_skipped WHERE rollout_id = ?", (rollout_id,)
            ).fetchall()
            return dict(rows)

        return await self._store.run(work)

    async def set_state(
        self, rollout_id: str, state: RolloutState, stage: int, reason: str, now: float
    ) -> None:
        await self._write(
            lambda db: db.execute(
                "UPDATE rollouts SET state = ?, stage = ?, reason = ?, updated_at = ? WHERE id = ?",
                (state, stage, reason, now, rollout_id),
            )
        )
        if (known := self._rollouts.get(rollout_id)) is not None:
            self._rollouts[rollout_id] = replace(
                known, state=state, stage=stage, reason=reason, updated_at=now
            )

    async def mark(
        self, rollout_id: str, device: str, state: DeviceState, now: float, detail: str = ""
    ) -> bool:
        """Record a device's verdict (offers: ``mark_offered``); False when the device is not in
        this rollout. A commit reported again (events come at least once) keeps the time of the
        first, which the soak counts from; a device blocked again keeps the time it was first
        blocked, which the rollout's deadline counts from."""
        assignments, times = "", ()
        if state == DeviceState.COMMITTED:
            assignments = ", committed_at = CASE WHEN state = ? THEN committed_at ELSE ? END"
            times = (DeviceState.COMMITTED, now)
        blocked_since = "CASE WHEN state = ? THEN blocked_since ELSE ? END"
        blocked = (DeviceState.BLOCKED, now) if state == DeviceState.BLOCKED else (None, None)
        sql = (
            f"UPDATE rollout_devices SET blocked_since = {blocked_since}, state = ?, detail = ?"
            f"{assignments} WHERE rollout_id = ? AND device = ?"
        )
        params = (*blocked, state, detail, *times, rollout_id, device)
        cursor = await self._write(lambda db: db.execute(sql, params))
        return cursor.rowcount == 1

    async def mark_offered(self, rollout_id: str, devices: Sequence[str], now: float) -> None:
        """Offers sent in one pass, recorded in one transaction (one fsync, not one each). The
        first offer's time is kept; one sent again sets ``reoffered_at``."""
        await self._write(
            lambda db: db.executemany(
                "UPDATE rollout_devices SET state = ?, detail = '', "
                "reoffered_at = CASE WHEN offered_at IS NULL THEN NULL ELSE ? END, "
                "offered_at = COALESCE(offered_at, ?), blocked_since = NULL "
                "WHERE rollout_id = ? AND device = ?",
                [(DeviceState.OFFERED, now, now, rollout_id, device) for device in devices],
            )
        )

    async def _write(self, fn):
        return await self._store.run(lambda db: transaction(db, lambda: fn(db)))


def _rollout(row: tuple) -> Rollout:
    (rid, model, version, stages, soak, rate, auto, state, stage, reason, created, updated) = row[
        :12
    ]
    plan = Plan(rid, model, version, tuple(json.loads(stages)), soak, rate, bool(auto), row[12])
    return Rollout(plan, RolloutState(state), stage, reason, created, updated)
