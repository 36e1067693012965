"""The gateway's SQLite database: one connection, used from one thread, in WAL mode with
``synchronous=FULL`` so a commit that returned survives a crash or a power cut.

Every database call runs on the store's single worker thread (``await store.run(fn, ...)``), so
the event loop never blocks on disk and no two calls ever interleave. Spool, inventory and
counters share the database, so one message group is one transaction and one fsync.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
SCHEMA_V1 = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids name batches
    n INTEGER NOT NULL,                    -- records in this row
    size INTEGER NOT NULL,                 -- bytes of data
    data BLOB NOT NULL                     -- the records' original bytes, one per line
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (device TEXT PRIMARY KEY, data TEXT NOT NULL);
"""
# Version 2 adds the dead letters (gateway/telemetry/dead_letters.py).
SCHEMA_V2 = """
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,             -- unix time it was set aside
    source TEXT NOT NULL,         -- 'mqtt' (a device message) or 'uplink' (records refused)
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    topic TEXT NOT NULL,
    records INTEGER NOT NULL,     -- records in data (uplink letters)
    size INTEGER NOT NULL,        -- bytes of the original
    data BLOB NOT NULL
);
"""
# Version 3 adds curation (gateway/telemetry/curation.py, summaries.py) and campaigns
# (gateway/campaigns/).
SCHEMA_V3 = """
CREATE TABLE summary_windows (
    device TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL, start_ms INTEGER NOT NULL,
    data TEXT NOT NULL,           -- the accumulator, JSON
    PRIMARY KEY (device, model, version, start_ms)
);
CREATE TABLE curation_seen (id INTEGER PRIMARY KEY AUTOINCREMENT, hash BLOB NOT NULL UNIQUE);
CREATE TABLE curation_quota (
    rule TEXT NOT NULL, scope TEXT NOT NULL, window INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (rule, scope, window)
);
CREATE TABLE campaigns (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL,           -- model, trigger, per_device, total, until_ms, created
    state TEXT NOT NULL,          -- running, ended
    reason TEXT NOT NULL,
    received INTEGER NOT NULL
);
CREATE TABLE campaign_devices (
    campaign TEXT NOT NULL, device TEXT NOT NULL,
    state TEXT NOT NULL,          -- sent, refused, stop_sent
    received INTEGER NOT NULL,
    PRIMARY KEY (campaign, device)
);
"""
# Script N brings a database from schema N to N + 1, in one transaction with the version.
MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)

log = structlog.get_logger()


class StoreError(RuntimeError):
    """The database on disk is not one this gateway can use."""


def open_database(path: Path, migrations: Sequence[str] = MIGRATIONS) -> sqlite3.Connection:
    """A connection to the database at ``path``, its schema brought up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        conn.close()
        raise StoreError(
            f"{path}: database schema {version} is newer than this gateway's {len(migrations)}"
        )
    for number, script in enumerate(migrations[version:], start=version + 1):
        conn.executescript(f"BEGIN;{script}PRAGMA user_version={number};COMMIT;")
        if version:
            log.info("database_migrated", path=str(path), schema=number)
    return conn


class Store:
    """``async with Store(path) as store``: ``await store.run(fn, *args)`` calls
    ``fn(connection, *args)`` on the database thread. ``migrations`` is the schema's history
    (the gateway's own by default)."""

    def __init__(self, path: Path, migrations: Sequence[str] = MIGRATIONS):
        self.path = path
        self.migrations = migrations
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gateway-db")
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn, *args)

    async def __aenter__(self) -> Store:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(
            self._executor, open_database, self.path, self.migrations
        )
        return self

    async def __aexit__(self, *exc) -> None:
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)


def transaction(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside ``BEGIN IMMEDIATE`` .. ``COMMIT``; roll back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def add_counter(conn: sqlite3.Connection, name: str, delta: int) -> None:
    conn.execute(
        "INSERT INTO counters(name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (name, delta),
    )


def counter(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0
