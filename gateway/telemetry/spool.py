"""The uplink spool: records wait here, on disk, until the cloud has answered 2xx for them.

A row holds the records of one device message as NDJSON (their original bytes, one per line), so
a batch for the cloud is a concatenation of rows. Row ids come from ``AUTOINCREMENT`` and are
never reused, which lets a batch be named by its row range.

Leasing: the uplink takes rows in id order past an in-memory cursor; a leased row stays on disk
until ``remove`` after the 2xx. After a restart the cursor starts at zero, so every row still on
disk is sent again (the cloud deduplicates by record id).

The cap is on record bytes. When a new group would exceed it, whole rows are dropped oldest
first, leased or not, and the records dropped are added to a persistent counter in the same
transaction. A batch in flight that lost rows is re-read before it is retried.

All ``_sync`` functions run on the store thread; the stats they update are read elsewhere.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.store import Store, add_counter, counter, transaction

DROPPED = "spool_dropped_records"
CLOUD_BYTES = "cloud_record_bytes"  # record bytes the sink confirmed (counters table)
ROWS_PER_READ = 512


@dataclass(frozen=True)
class SpoolRow:
    records: int
    data: bytes  # records joined by b"\n"


@dataclass(frozen=True)
class Batch:
    """Rows ``first..last`` of the spool, as one upload."""

    first: int
    last: int
    records: int
    body: bytes  # NDJSON, newline-terminated
    key: str  # idempotency key: same rows, same key


@dataclass
class SpoolStats:
    records: int = 0
    bytes: int = 0
    rows: int = 0
    pending_records: int = 0  # not yet leased
    pending_bytes: int = 0
    pending_since: float | None = None  # monotonic time the oldest pending row was noticed
    dropped: int = 0  # records, ever (persistent)
    cursor: int = 0  # highest leased row id


def batch_due(
    pending_records: int,
    pending_bytes: int,
    age: float | None,
    batch_records: int,
    batch_bytes: int,
    batch_age: float,
) -> bool:
    """Upload now: a full batch is waiting, or the oldest waiting record is old enough."""
    if pending_records == 0:
        return False
    return (
        pending_records >= batch_records
        or pending_bytes >= batch_bytes
        or (age is not None and age >= batch_age)
    )


def rows_to_drop(oldest: Iterable[int], excess: int) -> int:
    """How many of the oldest rows (their sizes, oldest first) free at least ``excess`` bytes."""
    count = freed = 0
    for size in oldest:
        if freed >= excess:
            break
        freed += size
        count += 1
    return count


def batch_key(spool_id: str, first: int, last: int, records: int) -> str:
    return hashlib.sha256(f"{spool_id}:{first}:{last}:{records}".encode()).hexdigest()[:40]


class UplinkSpool:
    """Append, lease, re-read and remove rows; cap with oldest-first drops."""

    def __init__(self, store: Store, max_bytes: int):
        self.store = store
        self.max_bytes = max_bytes
        self.stats = SpoolStats()
        self.spool_id = ""

    async def open(self) -> UplinkSpool:
        await self.store.run(self._load_sync)
        return self

    def _load_sync(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('spool_id', ?)", (uuid.uuid4().hex,))
            row = conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()
        self.spool_id = row[0]
        rows, records, size = conn.execute(
            "SELECT count(*), total(n), total(size) FROM records"
        ).fetchone()
        stats = self.stats
        stats.rows, stats.records, stats.bytes = rows, int(records), int(size)
        stats.pending_records, stats.pending_bytes = stats.records, stats.bytes
        stats.pending_since = time.monotonic() if rows else None
        stats.dropped = counter(conn, DROPPED)

    # -- writes, inside the caller's transaction ----------------------------------------------

    def append_sync(self, conn: sqlite3.Connection, rows: Sequence[SpoolRow]) -> int:
        """Insert ``rows``, dropping oldest rows first to stay under the cap; returns the
        number of records dropped."""
        stats = self.stats
        incoming = sum(len(r.data) for r in rows)
        excess = stats.bytes + incoming - self.max_bytes
        dropped = 0
        if excess > 0:
            dropped += self._drop_oldest_sync(conn, excess)
            excess = stats.bytes + incoming - self.max_bytes
        if excess > 0:  # the group alone is larger than the cap: its oldest rows go too
            skip = rows_to_drop((len(r.data) for r in rows), excess)
            dropped += sum(r.records for r in rows[:skip])
            rows = rows[skip:]
        conn.executemany(
            "INSERT INTO records(n, size, data) VALUES (?, ?, ?)",
            [(r.records, len(r.data), r.data) for r in rows],
        )
        if dropped:
            add_counter(conn, DROPPED, dropped)
            stats.dropped += dropped
        added_records = sum(r.records for r in rows)
        added_bytes = sum(len(r.data) for r in rows)
        stats.rows += len(rows)
        stats.records += added_records
        stats.bytes += added_bytes
        if rows and stats.pending_records == 0:
            stats.pending_since = time.monotonic()
        stats.pending_records += added_records
        stats.pending_bytes += added_bytes
        return dropped

    def _drop_oldest_sync(self, conn: sqlite3.Connection, excess: int) -> int:
        stats = self.stats
        dropped = 0
        while excess > 0 and stats.rows:
            found = conn.execute(
                "SELECT id, n, size FROM records ORDER BY id LIMIT ?", (ROWS_PER_READ,)
            ).fetchall()
            if not found:
                break
            count = rows_to_drop((size for _, _, size in found), excess)
            victims = found[:count]
            conn.execute("DELETE FROM records WHERE id <= ?", (victims[-1][0],))
            for row_id, n, size in victims:
                stats.rows -= 1
                stats.records -= n
                stats.bytes -= size
                if row_id > stats.cursor:
                    stats.pending_records -= n
                    stats.pending_bytes -= size
                dropped += n
                excess -= size
        if stats.pending_records == 0:
            stats.pending_since = None
        return dropped

    # -- uplink side ---------------------------------------------------------------------------

    def _lease_sync(self, conn: sqlite3.Connection, max_records: int, max_bytes: int):
        stats = self.stats
        cur = conn.execute(
            "SELECT id, n, data FROM records WHERE id > ? ORDER BY id", (stats.cursor,)
        )
        ids, parts, records, size = [], [], 0, 0
        for row_id, n, data in cur:
            if ids and (records + n > max_records or size + len(data) + 1 > max_bytes):
                break
            ids.append(row_id)
            parts.append(data)
            records += n
            size += len(data) + 1
        cur.close()
        if not ids:
            return None
        stats.cursor = ids[-1]
        stats.pending_records -= records
        stats.pending_bytes -= size - len(ids)
        stats.pending_since = time.monotonic() if stats.pending_records else None
        return self._batch(ids[0], ids[-1], records, parts)

    def _batch(self, first: int, last: int, records: int, parts: list[bytes]) -> Batch:
        body = b"\n".join(parts) + b"\n"
        return Batch(first, last, records, body, batch_key(self.spool_id, first, last, records))

    def _reread_sync(self, conn: sqlite3.Connection, batch: Batch) -> Batch | None:
        span = (batch.first, batch.last)
        (records,) = conn.execute(
            "SELECT total(n) FROM records WHERE id BETWEEN ? AND ?", span
        ).fetchone()
        if records == batch.records:
            return batch
        if not records:
            return None
        found = conn.execute(
            "SELECT id, n, data FROM records WHERE id BETWEEN ? AND ? ORDER BY id", span
        ).fetchall()
        records = sum(n for _, n, _ in found)
        return self._batch(found[0][0], batch.last, records, [data for _, _, data in found])

    def remove_sync(self, conn: sqlite3.Connection, batch: Batch) -> None:
        """Delete the rows of ``batch``, inside the caller's transaction."""
        span = (batch.first, batch.last)
        rows, records, size = conn.execute(
            "SELECT count(*), total(n), total(size) FROM records WHERE id BETWEEN ? AND ?", span
        ).fetchone()
        conn.execute("DELETE FROM records WHERE id BETWEEN ? AND ?", span)
        self.stats.rows -= rows
        self.stats.records -= int(records)
        self.stats.bytes -= int(size)

    def _remove_sync(self, conn: sqlite3.Connection, batch: Batch) -> None:
        def work() -> None:
            self.remove_sync(conn, batch)
            add_counter(conn, CLOUD_BYTES, len(batch.body))

        transaction(conn, work)

    async def lease(self, max_records: int, max_bytes: int) -> Batch | None:
        return await self.store.run(self._lease_sync, max_records, max_bytes)

    async def reread(self, batch: Batch) -> Batch | None:
        """The batch as it is on disk now (rows may have been dropped), or None if all went."""
        return await self.store.run(self._reread_sync, batch)

    async def remove(self, batch: Batch) -> None:
        """The cloud confirmed ``batch``: delete its rows and count its bytes as delivered."""
        await self.store.run(self._remove_sync, batch)

    def oldest_age(self) -> float | None:
        since = self.stats.pending_since
        return None if since is None else time.monotonic() - since
