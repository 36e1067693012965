"""Per-device summaries that always reach the cloud, whatever the curation rules drop.

For each device, model, version and window (``summary_window_s`` of device time), an
accumulator counts inferences per class, samples, drift windows and alarms, and keeps
histograms of confidence (100 bins over [0, 1]) and latency (4 bins per doubling of
microseconds), from which the summary's mean and percentiles come (so a percentile is exact to a
bin: 0.01 of confidence, about 19 % of latency). Accumulators live in SQLite and change in the
ingest's transaction, so a crash neither loses nor double-counts a record's share. A window is
closed once the gateway's clock is a whole window past its end (late records after that start a
second summary of the same window; its counts add up downstream). Closed windows become
``summary`` records in the uplink spool, numbered under the gateway's own boot id.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from gateway.store import add_counter, counter
from gateway.telemetry.spool import SpoolRow, UplinkSpool

CONFIDENCE_BINS = 100
MAX_RANGES = 2000  # id ranges of curated-out records listed per summary; the rest only counted
LATENCY_BINS = 4 * 33  # up to 2**33 microseconds
SEQ_COUNTER = "summary_seq"

Key = tuple[str, str, int, int]  # device, model, version, window start (ms)


def latency_bin(us: float) -> int:
    return min(LATENCY_BINS - 1, max(0, int(4 * math.log2(us + 1))))


def latency_of_bin(index: int) -> float:
    """The geometric middle of a latency bin, in microseconds."""
    return 2 ** ((index + 0.5) / 4) - 1


def percentile(hist: list[int], q: float) -> int | None:
    """Index of the bin holding the ``q`` quantile (None for an empty histogram)."""
    total = sum(hist)
    if not total:
        return None
    rank, seen = q * total, 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= rank and count:
            return index
    return len(hist) - 1


@dataclass
class Window:
    records: int = 0
    samples: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    confidence_sum: float = 0.0
    confidence: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    latency_sum: float = 0.0
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_BINS)
    drift_windows: int = 0
    drift_alarms: int = 0
    max_psi: float = 0.0
    # Records curation kept from the cloud, by stream and boot: ``[first, last]`` sequence
    # ranges, so the cloud can account for every record id (a duplicate is listed once).
    curated: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)
    unlisted: int = 0  # curated-out records past MAX_RANGES, counted only

    def curated_out(self, stream: str, boot: str, seq: int) -> None:
        ranges = self.curated.setdefault(stream, {}).setdefault(boot, [])
        if ranges and ranges[-1][0] <= seq <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], seq)
        elif sum(len(r) for b in self.curated.values() for r in b.values()) >= MAX_RANGES:
            self.unlisted += 1
        else:
            ranges.append([seq, seq])

    def add(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "inference":
            top = record.get("top") or [[0, 0.0]]
            cls, score = int(top[0][0]), float(top[0][1])
            self.records += 1
            self.classes[str(cls)] = self.classes.get(str(cls), 0) + 1
            self.confidence_sum += score
            self.confidence[min(CONFIDENCE_BINS - 1, max(0, int(score * CONFIDENCE_BINS)))] += 1
            us = float(record.get("lat_us") or 0)
            self.latency_sum += us
            self.latency[latency_bin(us)] += 1
        elif kind == "drift":
            self.drift_windows += 1
            self.drift_alarms += bool(record.get("alarm"))
            self.max_psi = max(self.max_psi, float(record.get("max_psi") or 0.0))
        elif kind == "sample":
            self.samples += 1

    def body(self) -> dict[str, Any]:
        """What the summary record says, beside its id and window."""
        n = self.records

        def stats(hist: list[int], total: float, value) -> dict[str, float | None]:
            marks = {f"p{q}": percentile(hist, q / 100) for q in (50, 90, 99)}
            out: dict[str, float | None] = {"mean": round(total / n, 6) if n else None}
            out |= {k: None if i is None else round(value(i), 6) for k, i in marks.items()}
            return out

        return {
            "records": n,
            "samples": self.samples,
            "classes": dict(sorted(self.classes.items(), key=lambda kv: int(kv[0]))),
            "confidence": stats(
                self.confidence, self.confidence_sum, lambda i: (i + 0.5) / CONFIDENCE_BINS
            ),
            "latency_us": stats(self.latency, self.latency_sum, latency_of_bin),
            "drift": {
                "windows": self.drift_windows,
                "alarms": self.drift_alarms,
                "max_psi": round(self.max_psi, 6),
            },
            "curated_out": self.curated,
            "curated_out_unlisted": self.unlisted,
        }


class Summaries:
    """Accumulators by window; all ``_sync`` methods run on the store thread."""

    def __init__(self, window_s: int, boot: str):
        self.window_ms = window_s * 1000
        self.boot = boot  # the id space of summary records (hex, from the spool id)
        self.open: dict[Key, Window] = {}

    def load_sync(self, conn: sqlite3.Connection) -> None:
        self.open = {}
        for device, model, version, start, data in conn.execute(
            "SELECT device, model, version, start_ms, data FROM summary_windows"
        ):
            self.open[(device, model, version, start)] = Window(**json.loads(data))

    def add_sync(
        self,
        conn: sqlite3.Connection,
        device: str,
        stream: str,
        records: list[dict],
        dropped: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        """Count ``records`` into their windows; those at the ``dropped`` indexes were kept
        from the cloud by curation, and their ids are listed."""
        touched: dict[Key, Window] = {}
        for index, record in enumerate(records):
            start = record["ts_ms"] - record["ts_ms"] % self.window_ms
            key = (device, str(record.get("model")), int(record.get("version") or 0), start)
            window = touched.get(key) or self.open.get(key) or Window()
            window.add(record)
            if index in dropped:
                window.curated_out(stream, record["boot"], record["seq"])
            touched[key] = window
        conn.executemany(
            "INSERT OR REPLACE INTO summary_windows VALUES (?, ?, ?, ?, ?)",
            [(*key, json.dumps(vars(w))) for key, w in touched.items()],
        )
        self.open.update(touched)

    def flush_sync(self, conn: sqlite3.Connection, spool: UplinkSpool, now_ms: int) -> int:
        """Move windows closed by ``now_ms`` into the spool as summary records (inside the
        caller's transaction); returns how many."""
        closed = [k for k in self.open if k[3] + 2 * self.window_ms <= now_ms]
        if not closed:
            return 0
        seq = counter(conn, SEQ_COUNTER)
        lines = []
        for number, key in enumerate(sorted(closed, key=lambda k: k[3])):
            device, model, version, start = key
            record = {
                "dev": device,
                "boot": self.boot,
                "seq": seq + number,
                "ts_ms": start + self.window_ms,
                "kind": "summary",
                "model": model,
                "version": version,
                "stream": "telemetry",
                "start_ms": start,
                "window_s": self.window_ms // 1000,
            } | self.open[key].body()
            lines.append(json.dumps(record, separators=(",", ":")).encode())
        spool.append_sync(conn, [SpoolRow(len(lines), b"\n".join(lines))])
        add_counter(conn, SEQ_COUNTER, len(lines))
        conn.executemany(
            "DELETE FROM summary_windows WHERE device = ? AND model = ? AND version = ? "
            "AND start_ms = ?",
            closed,
        )
        for key in closed:
            del self.open[key]
        return len(lines)
