"""The telemetry spool: encoded records in SQLite (WAL, synchronous=FULL) until the broker has
acknowledged them, bounded by bytes, dropping the oldest first and counting every drop.

Rules, each kept by one SQLite transaction:

* ``append`` stores records, the next sequence number and the drops the byte cap forced, together.
  A record exists (has a sequence number anyone can see) only once this transaction committed, so
  a crash before it leaves no gap in the sequence.
* ``claim`` marks the oldest records *sent* before they go out. A sent record may already be at the
  broker, so the cap never drops it (it would be counted as dropped and yet delivered); it is sent
  again first after a reconnect or a restart. The cap can thus be exceeded by at most one batch.
* ``ack`` deletes records only after their PUBACK.

The boot id changes when the host boots (or the database is new); sequence numbers restart at 0
with it, and continue across agent restarts within one boot.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.threads import serial

FORMAT_VERSION = 1
HOST_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
"""
COUNTERS = ("next_seq", "dropped", "produced", "bytes")

log = structlog.get_logger()


class SpoolError(Exception):
    """The spool database cannot be opened or is of an unknown format."""


@dataclass(frozen=True)
class SpoolStats:
    boot: str
    next_seq: int
    depth: int
    bytes: int
    cap_bytes: int
    dropped: int
    produced: int


@dataclass(frozen=True)
class Claim:
    """Records on their way to the broker, oldest first."""

    first_id: int
    last_id: int
    bodies: tuple[bytes, ...]


def host_boot_id() -> str:
    try:
        return HOST_BOOT_ID.read_text().strip().replace("-", "")
    except OSError:
        return ""


def cap_victims(rows: Sequence[tuple[int, int]], excess: int) -> tuple[int, int]:
    """Of the oldest unsent ``(id, size)`` rows, how many to drop to free ``excess`` bytes and
    the bytes that frees: ``(count, freed)``."""
    count = freed = 0
    for _, size in rows:
        if freed >= excess:
            break
        count, freed = count + 1, freed + size
    return count, freed


class SpoolDB:
    """The synchronous spool; one thread uses it (``Spool`` runs it in its own thread).
    ``schema`` adds tables of the spool's user, kept in the same database so that they can
    change in the transaction that stores records (``append(..., within=...)``)."""

    def __init__(self, path: Path, cap_bytes: int, host_boot: str, schema: str = ""):
        self.cap_bytes = cap_bytes
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA journal_size_limit=4194304")
            self._db.execute("PRAGMA cache_size=-512")  # KiB: records pass through once
            with self._transaction():
                for statement in (SCHEMA + schema).split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                meta = dict(self._db.execute("SELECT key, value FROM meta"))
                if meta.get("format", FORMAT_VERSION) != FORMAT_VERSION:
                    raise SpoolError(f"spool {path} has unknown format {meta['format']!r}")
                if not meta or meta.get("host_boot") != host_boot or not host_boot:
                    meta |= {"boot": secrets.token_hex(8), "next_seq": 0, "host_boot": host_boot}
                meta.setdefault("dropped", 0)
                meta.setdefault("produced", 0)
                meta["bytes"] = self._db.execute(
                    "SELECT coalesce(sum(size), 0) FROM records"
                ).fetchone()[0]
                meta["format"] = FORMAT_VERSION
                self._db.executemany("REPLACE INTO meta VALUES (?, ?)", meta.items())
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {path}: {exc}") from None
        self.boot: str = meta["boot"]
        self.next_seq, self.dropped, self.produced, self.bytes = (int(meta[k]) for k in COUNTERS)
        self.depth = self._db.execute("SELECT count(*) FROM records").fetchone()[0]
        self.unsaved_drops = 0

    def _transaction(self):
        return _Transaction(self._db)

    def append(
        self,
        bodies: Sequence[bytes],
        next_seq: int,
        within: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        """Store ``bodies`` (their records numbered up to ``next_seq - 1``), and run ``within``
        in the same transaction; returns how many records the cap dropped. If the database
        fails, the records are counted as dropped (and ``within`` had no effect)."""
        try:
            with self._transaction():
                if within is not None:
                    within(self._db)
                self._db.executemany(
                    "INSERT INTO records (size, body) VALUES (?, ?)",
                    ((len(b), b) for b in bodies),
                )
                size = sum(len(b) for b in bodies)
                dropped, freed = self._enforce_cap(self.bytes + size)
                counters = (
                    next_seq,
                    self.dropped + self.unsaved_drops + dropped,
                    self.produced + len(bodies),
                    self.bytes + size - freed,
                )
                self._db.executemany(
                    "REPLACE INTO meta VALUES (?, ?)", zip(COUNTERS, counters, strict=True)
                )
        except sqlite3.Error as exc:
            log.error("spool_write_failed", error=str(exc), records=len(bodies))
            self.unsaved_drops += len(bodies)
            self.produced += len(bodies)
            self.next_seq = next_seq
            return len(bodies)
        self.next_seq, self.dropped, self.produced, self.bytes = counters
        self.unsaved_drops = 0
        self.depth += len(bodies) - dropped
        return dropped

    def _enforce_cap(self, total: int) -> tuple[int, int]:
        dropped = freed = 0
        while total - freed > self.cap_bytes:
            rows = self._db.execute(
                "SELECT id, size FROM records WHERE sent = 0 ORDER BY id LIMIT 512"
            ).fetchall()
            if not rows:
                break
            count, gained = cap_victims(rows, total - freed - self.cap_bytes)
            self._db.execute(
                "DELETE FROM records WHERE sent = 0 AND id <= ?", (rows[count - 1][0],)
            )
            dropped, freed = dropped + count, freed + gained
        return dropped, freed

    def claim(self, max_records: int, max_bytes: int, overhead: int) -> Claim | None:
        """Mark the oldest records (up to the limits, at least one) sent and return them."""
        rows = self._db.execute(
            "SELECT id, body FROM records ORDER BY id LIMIT ?", (max_records,)
        ).fetchall()
        if not rows:
            return None
        total, taken = 0, 0
        for _, body in rows:
            total += len(body) + 1
            if taken and total + overhead > max_bytes:
                break
            taken += 1
        rows = rows[:taken]
        with self._transaction():
            self._db.execute(
                "UPDATE records SET sent = 1 WHERE id BETWEEN ? AND ? AND sent = 0",
                (rows[0][0], rows[-1][0]),
            )
        return Claim(rows[0][0], rows[-1][0], tuple(body for _, body in rows))

    def ack(self, claim: Claim) -> None:
        """The broker has these records: delete them."""
        with self._transaction():
            count, size = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM records WHERE id BETWEEN ? AND ?",
                (claim.first_id, claim.last_id),
            ).fetchone()
            self._db.execute(
                "DELETE FROM records WHERE id BETWEEN ? AND ?", (claim.first_id, claim.last_id)
            )
            self._db.execute("REPLACE INTO meta VALUES ('bytes', ?)", (self.bytes - size,))
        self.bytes -= size
        self.depth -= count

    def transact(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        """``fn(connection)`` in one transaction (the user's own tables)."""
        with self._transaction():
            return fn(self._db)

    def stats(self) -> SpoolStats:
        return SpoolStats(
            boot=self.boot,
            next_seq=self.next_seq,
            depth=self.depth,
            bytes=self.bytes,
            cap_bytes=self.cap_bytes,
            dropped=self.dropped + self.unsaved_drops,
            produced=self.produced,
        )

    def abandon(self) -> None:
        """Close without a checkpoint (no transaction is open between calls)."""
        self._db.close()

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on any error)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class Spool:
    """``SpoolDB`` in its own thread (``agent.threads.serial``), as an async context manager.
    ``changed`` is set whenever records are added; ``pending_since`` is when the oldest unsent
    record arrived (monotonic)."""

    def __init__(self, path: Path, cap_bytes: int, schema: str = ""):
        self._path, self._cap, self._schema = path, cap_bytes, schema
        self._executor = serial("spool")
        self.changed = asyncio.Event()
        self.pending_since: float | None = None
        self._db: SpoolDB | None = None
        self._aborted = False

    def abort(self) -> None:
        """No further write (a power cut): what waits for the spool's thread is dropped, the
        write in progress ends as its transaction does, and exiting only closes."""
        self._aborted = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Spool:
        self._db = await self._call(SpoolDB, self._path, self._cap, host_boot_id(), self._schema)
        if self._db.depth:
            self.pending_since = 0.0  # left over from before: send without waiting
            self.changed.set()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._aborted:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            if self._db is not None:
                self._db.abandon()
            return
        await self._call(self._db.close)
        self._executor.shutdown(wait=True)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def stats(self) -> SpoolStats:
        return self._db.stats()

    async def append(
        self,
        bodies: Sequence[bytes],
        next_seq: int,
        within: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        dropped = await self._call(self._db.append, bodies, next_seq, within)
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        self.changed.set()
        return dropped

    async def transact(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        return await self._call(self._db.transact, fn)

    async def settle(self) -> None:
        """Wait for the writes already handed to the spool's thread: an append whose caller
        was cancelled (the pipeline, at shutdown) still commits, and counts once it has."""
        await self._call(lambda: None)

    async def claim(self, max_records: int, max_bytes: int, overhead: int) -> Claim | None:
        return await self._call(self._db.claim, max_records, max_bytes, overhead)

    async def ack(self, claim: Claim) -> None:
        await self._call(self._db.ack, claim)
        self.pending_since = time.monotonic() if self._db.depth else None
