"""Dead letters: what the gateway set aside instead of choking on it, kept for the operator.

Two sources put letters here. The ingest puts every device message it could not decode,
validate or store (``source = "mqtt"``), with its first ``MAX_KEPT_BYTES`` bytes: the message is
acknowledged and the gateway goes on, because re-sending would not make it valid. The uplink
puts the records of a batch the cloud refused for good (``source = "uplink"``: a 4xx that is about
the batch), whole, so the operator can send them again once the cloud takes them
(``resend_sync`` puts them back into the spool).

The store is bounded by ``max_entries`` and ``max_bytes``: the oldest letters go first, and the
letters and records dropped that way are added to persistent counters in the same transaction,
so every record stays accounted for: delivered, dropped by the spool cap, here, or dropped from
here. All ``_sync`` functions run on the store thread inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.store import add_counter, counter

MAX_KEPT_BYTES = 64 * 1024  # of a device message: enough to see what was wrong with it
MAX_DETAIL = 4096  # characters of the reason line or of the cloud's answer
ENTRY_OVERHEAD = 256  # bytes a letter costs besides its data, for the byte cap
DROPPED = "dead_letters_dropped"
DROPPED_RECORDS = "dead_letters_dropped_records"
SET_ASIDE_RECORDS = "dead_letters_records"


@dataclass(frozen=True)
class Letter:
    source: str  # "mqtt" or "uplink"
    kind: str  # mqtt: telemetry/status/events/topic; uplink: http_<status>
    reason: str  # a short label (metrics): a ProtocolError reason, "store", "refused"...
    detail: str  # the full reason line, or the cloud's answer
    topic: str
    size: int  # bytes of the original
    data: bytes  # the original, or its first MAX_KEPT_BYTES for a device message
    records: int = 0  # uplink: NDJSON records in data


def message_letter(kind: str, reason: str, detail: str, topic: str, payload: bytes) -> Letter:
    return Letter(
        "mqtt",
        kind,
        reason,
        detail[:MAX_DETAIL],
        topic[:512],
        len(payload),
        payload[:MAX_KEPT_BYTES],
    )


@dataclass
class DeadLetterStats:
    entries: int = 0
    bytes: int = 0  # data bytes held
    records: int = 0  # records held (uplink letters)
    dropped: int = 0  # letters dropped by the cap, ever (persistent)
    dropped_records: int = 0  # records in them (persistent)
    set_aside_records: int = 0  # records the cloud refused for good, ever (persistent)


class DeadLetters:
    """The ``dead_letters`` table with its caps and counters."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.stats = DeadLetterStats()

    def load_sync(self, conn: sqlite3.Connection) -> DeadLetters:
        entries, size, records = conn.execute(
            "SELECT count(*), total(length(data)), total(records) FROM dead_letters"
        ).fetchone()
        stats = self.stats
        stats.entries, stats.bytes, stats.records = entries, int(size), int(records)
        stats.dropped = counter(conn, DROPPED)
        stats.dropped_records = counter(conn, DROPPED_RECORDS)
        stats.set_aside_records = counter(conn, SET_ASIDE_RECORDS)
        return self

    def _cost(self, entries: int, size: int) -> int:
        return size + entries * ENTRY_OVERHEAD

    def add_sync(self, conn: sqlite3.Connection, letters: Sequence[Letter]) -> None:
        """Keep ``letters``, dropping the oldest (these included) beyond the caps."""
        now = time.time()
        stats = self.stats
        for letter in letters:
            conn.execute(
                "INSERT INTO dead_letters(at, source, kind, reason, detail, topic, records, size, "
                "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    letter.source,
                    letter.kind,
                    letter.reason,
                    letter.detail,
                    letter.topic,
                    letter.records,
                    letter.size,
                    letter.data,
                ),
            )
            stats.entries += 1
            stats.bytes += len(letter.data)
            stats.records += letter.records
            if letter.source == "uplink":
                add_counter(conn, SET_ASIDE_RECORDS, letter.records)
                stats.set_aside_records += letter.records
        self._drop_sync(conn)

    def _drop_sync(self, conn: sqlite3.Connection) -> None:
        stats = self.stats
        entries = records = 0
        cursor = conn.execute("SELECT id, length(data), records FROM dead_letters ORDER BY id")
        last = None
        for row_id, size, n in cursor:
            over_count = stats.entries - entries > self.max_entries
            over_bytes = self._cost(stats.entries - entries, stats.bytes) > self.max_bytes
            if not (over_count or over_bytes):
                break
            last, entries, records = row_id, entries + 1, records + n
            stats.bytes -= size
        cursor.close()
        if last is None:
            return
        conn.execute("DELETE FROM dead_letters WHERE id <= ?", (last,))
        stats.entries -= entries
        stats.records -= records
        add_counter(conn, DROPPED, entries)
        add_counter(conn, DROPPED_RECORDS, records)
        stats.dropped += entries
        stats.dropped_records += records

    def list_sync(self, conn: sqlite3.Connection, limit: int) -> list[dict]:
        """The newest ``limit`` letters, oldest first, with a printable preview of their data."""
        rows = conn.execute(
            "SELECT id, at, source, kind, reason, detail, topic, records, size, "
            "substr(data, 1, 200) FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("id", "at", "source", "kind", "reason", "detail", "topic", "records", "size")
        out = []
        for row in reversed(rows):
            entry = dict(zip(keys, row[:-1], strict=True))
            entry["preview"] = bytes(row[-1]).decode(errors="backslashreplace")
            out.append(entry)
        return out

    def take_sync(self, conn: sqlite3.Connection, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """Remove the uplink letters ``ids`` (all of them when empty) and return their
        ``(records, data)``; a letter that is missing or not records is a ``LookupError``."""
        if ids:
            found = {}
            for letter_id in ids:
                row = conn.execute(
                    "SELECT source, records, data FROM dead_letters WHERE id = ?", (letter_id,)
                ).fetchone()
                if row is None:
                    raise LookupError(f"no dead letter {letter_id}")
                if row[0] != "uplink":
                    raise LookupError(
                        f"dead letter {letter_id} is a device message the gateway refused, "
                        "not records the cloud refused: there is nothing to send"
                    )
                found[letter_id] = (row[1], bytes(row[2]))
        else:
            found = {
                row_id: (n, bytes(data))
                for row_id, n, data in conn.execute(
                    "SELECT id, records, data FROM dead_letters WHERE source = 'uplink' ORDER BY id"
                )
            }
        for letter_id, (n, data) in found.items():
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))
            self.stats.entries -= 1
            self.stats.bytes -= len(data)
            self.stats.records -= n
        return list(found.values())
