"""Rollouts on disk (SQLite): a gateway restart carries on where it stopped."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.rollouts.decisions import DeviceState, Plan, Progress, RolloutState

SCHEMA = """
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


@dataclass(frozen=True)
class Rollout:
    plan: Plan
    state: RolloutState
    stage: int
    reason: str
    created_at: float
    updated_at: float


class RolloutStore:
    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def create(
        self, plan: Plan, stages: dict[str, int], skipped: dict[str, str], now: float
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
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

    def get(self, rollout_id: str) -> Rollout | None:
        row = self._db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return _rollout(row) if row else None

    def list(self) -> list[Rollout]:
        rows = self._db.execute("SELECT * FROM rollouts ORDER BY created_at").fetchall()
        return [_rollout(r) for r in rows]

    def active(self) -> list[Rollout]:
        rows = self._db.execute(
            "SELECT * FROM rollouts WHERE state IN (?, ?) ORDER BY created_at",
            (RolloutState.RUNNING, RolloutState.PAUSED),
        ).fetchall()
        return [_rollout(r) for r in rows]

    def progress(self, rollout_id: str) -> list[Progress]:
        rows = self._db.execute(
            "SELECT device, stage, state, committed_at, offered_at FROM rollout_devices "
            "WHERE rollout_id = ?",
            (rollout_id,),
        ).fetchall()
        return [Progress(d, s, DeviceState(st), c, o) for d, s, st, c, o in rows]

    def device_state(self, rollout_id: str, device: str) -> DeviceState | None:
        row = self._db.execute(
            "SELECT state FROM rollout_devices WHERE rollout_id = ? AND device = ?",
            (rollout_id, device),
        ).fetchone()
        return DeviceState(row[0]) if row else None

    def skipped(self, rollout_id: str) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT device, reason FROM rollout_skipped WHERE rollout_id = ?", (rollout_id,)
        ).fetchall()
        return dict(rows)

    def set_state(
        self, rollout_id: str, state: RolloutState, stage: int, reason: str, now: float
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE rollouts SET state = ?, stage = ?, reason = ?, updated_at = ? WHERE id = ?",
                (state, stage, reason, now, rollout_id),
            )

    def mark(
        self, rollout_id: str, device: str, state: DeviceState, now: float, detail: str = ""
    ) -> bool:
        """Record a device's verdict (offers: ``mark_offered``); False when the device is not in
        this rollout. A commit reported again (events come at least once) keeps the time of the
        first, which the soak counts from."""
        assignment, times = "", ()
        if state == DeviceState.COMMITTED:
            assignment = ", committed_at = CASE WHEN state = ? THEN committed_at ELSE ? END"
            times = (DeviceState.COMMITTED, now)
        params = (state, detail, *times, rollout_id, device)
        with self.transaction() as db:
            cursor = db.execute(
                f"UPDATE rollout_devices SET state = ?, detail = ?{assignment} "
                "WHERE rollout_id = ? AND device = ?",
                params,
            )
        return cursor.rowcount == 1

    def mark_offered(self, rollout_id: str, devices: Sequence[str], now: float) -> None:
        """Offers sent in one pass, recorded in one transaction (one fsync, not one each)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE rollout_devices SET state = ?, detail = '', offered_at = ? "
                "WHERE rollout_id = ? AND device = ?",
                [(DeviceState.OFFERED, now, rollout_id, device) for device in devices],
            )


def _rollout(row: tuple) -> Rollout:
    (rid, model, version, stages, soak, rate, auto, state, stage, reason, created, updated) = row
    plan = Plan(rid, model, version, tuple(json.loads(stages)), soak, rate, bool(auto))
    return Rollout(plan, RolloutState(state), stage, reason, created, updated)
