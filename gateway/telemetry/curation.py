"""Curation before anything leaves the site: the ``[curation]`` rules applied to each device
message's records inside the ingest's transaction, so what is kept, what each rule dropped, the
quotas and the dedup memory change together with the spool.

A label record (an application's correction on the device) is always kept. Any other record is
kept or dropped by the first rule that decides it (``keep``, ``drop``, ``sample``,
a full ``quota``, a ``dedup`` that has seen it); rules that do not decide (a quota with room, a
dedup that has not seen it, ``scrub``) pass it on, and ``default`` decides what no rule did.
Conditions (``when``) use the trigger language of ``protocol.capture`` over each record's class,
confidence, margin, latency and drift flag, evaluated for all records of a message at once.
Every record summarised (``summaries``) whatever happens to it, and every drop is counted by
rule, persistently.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.store import add_counter
from gateway.telemetry.curation_rules import CurationConfig, Rule
from protocol.capture import evaluate, fields_of

ID_FIELDS = ("dev", "boot", "seq", "ts_ms")
DROPPED_PREFIX = "curation_dropped:"  # counters: curation_dropped:<stream>:<rule>


def dropped_sync(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Records curation kept from the cloud since the database began: stream -> rule -> count."""
    out: dict[str, dict[str, int]] = {}
    rows = conn.execute(
        "SELECT name, value FROM counters WHERE name LIKE ?", (DROPPED_PREFIX + "%",)
    )
    for name, value in rows:
        stream, rule = name.removeprefix(DROPPED_PREFIX).split(":", 1)
        out.setdefault(stream, {})[rule] = value
    return out


@dataclass
class Curated:
    kept: list[bytes]
    dropped: Counter = field(default_factory=Counter)  # rule name (or "default") -> records
    dropped_rows: list[int] = field(default_factory=list)  # indexes of the records dropped


def columns(records: list[dict[str, Any]], wanted: set[str], rng: random.Random) -> dict:
    """The trigger vocabulary for each record: inference, sample or drift window."""
    out: dict[str, list] = {name: [] for name in wanted}
    for record in records:
        kind = record.get("kind")
        if kind == "inference":
            top = record.get("top") or [[-1, 0.0]]
            cls, best = top[0][0], float(top[0][1])
            margin = best - float(top[1][1]) if len(top) > 1 else best
            latency, drift = float(record.get("lat_us") or 0) / 1000, False
        elif kind == "sample":
            cls, best = record.get("class", -1), float(record.get("confidence") or 0.0)
            margin, latency, drift = float(record.get("margin") or 0.0), 0.0, record.get("drift")
        else:
            cls, best, margin, latency = -1, 0.0, 0.0, 0.0
            drift = bool(record.get("alarm"))
        values = {
            "class": cls,
            "confidence": best,
            "margin": margin,
            "latency_ms": latency,
            "random": rng.random(),
            "drift": bool(drift),
            "disagree": False,
        }
        for name in wanted:
            out[name].append(values[name])
    return {name: np.asarray(values) for name, values in out.items()}


def content_hash(record: dict[str, Any]) -> bytes:
    """What a record says, less who sent it when: two captures of one input hash the same."""
    body = {k: v for k, v in record.items() if k not in ID_FIELDS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()[:16]


class Curator:
    """The rules, their 1-in-N counters, quotas and dedup memory (``_sync``: store thread)."""

    def __init__(self, config: CurationConfig, seed: int | None = None):
        self.config = config
        self._rng = random.Random(seed)
        self._every: Counter = Counter()  # rule -> records matched so far (sample)
        self._fields = {r.name: fields_of(r.when) if r.when else set() for r in config.rules}

    def apply_sync(
        self, conn: sqlite3.Connection, device: str, stream: str, records: list[tuple[dict, bytes]]
    ) -> Curated:
        result = Curated([])
        # Labels are what the loop exists for, and few: no rule drops them.
        decided: list[bool | None] = [
            True if data.get("kind") == "label" else None for data, _ in records
        ]
        bodies = [raw for _, raw in records]
        for rule in self.config.rules:
            rows = [
                i
                for i, (data, _) in enumerate(records)
                if decided[i] is None and rule.applies(stream, str(data.get("model")))
            ]
            if rule.when is not None and rows:
                chosen = [records[i][0] for i in rows]
                mask = evaluate(rule.when, columns(chosen, self._fields[rule.name], self._rng))
                rows = [i for i, hit in zip(rows, mask.tolist(), strict=True) if hit]
            for i in rows:
                verdict = self._decide_sync(conn, rule, device, records[i][0])
                if verdict is False:
                    result.dropped[rule.name] += 1
                if rule.action == "scrub":
                    bodies[i] = self._scrub(rule, records[i][0])
                decided[i] = verdict
        keep_rest = self.config.default == "keep"
        for i, verdict in enumerate(decided):
            if verdict or (verdict is None and keep_rest):
                result.kept.append(bodies[i])
                continue
            result.dropped_rows.append(i)
            if verdict is None:
                result.dropped["default"] += 1
        for name, count in result.dropped.items():
            add_counter(conn, f"{DROPPED_PREFIX}{stream}:{name}", count)
        return result

    def _decide_sync(
        self, conn: sqlite3.Connection, rule: Rule, device: str, record: dict
    ) -> bool | None:
        """True: keep; False: drop; None: pass it on to the next rule."""
        action = rule.action
        if action in ("keep", "drop"):
            return action == "keep"
        if action == "sample":
            self._every[rule.name] += 1
            return (self._every[rule.name] - 1) % rule.every == 0
        if action == "dedup":
            return self._seen_sync(conn, content_hash(record))
        if action == "quota":
            return self._quota_sync(conn, rule, device, record)
        return None  # scrub

    def _seen_sync(self, conn: sqlite3.Connection, digest: bytes) -> bool | None:
        inserted = conn.execute("INSERT OR IGNORE INTO curation_seen(hash) VALUES (?)", (digest,))
        if inserted.rowcount == 0:
            return False
        conn.execute(
            "DELETE FROM curation_seen WHERE id <= (SELECT max(id) FROM curation_seen) - ?",
            (self.config.dedup_memory,),
        )
        return None

    def _quota_sync(
        self, conn: sqlite3.Connection, rule: Rule, device: str, record: dict
    ) -> bool | None:
        window = record["ts_ms"] // (rule.window_s * 1000)
        cls = record.get("class")
        if cls is None and record.get("kind") == "inference":
            cls = (record.get("top") or [[None]])[0][0]
        scopes = []
        if rule.per_device is not None:
            scopes.append((f"device:{device}", rule.per_device))
        if rule.per_class is not None:
            scopes.append((f"class:{cls}", rule.per_class))
        counts = []
        for scope, limit in scopes:
            row = conn.execute(
                "SELECT count FROM curation_quota WHERE rule = ? AND scope = ? AND window = ?",
                (rule.name, scope, window),
            ).fetchone()
            if row is not None and row[0] >= limit:
                return False
            counts.append(scope)
        conn.executemany(
            "INSERT INTO curation_quota(rule, scope, window, count) VALUES (?, ?, ?, 1) "
            "ON CONFLICT(rule, scope, window) DO UPDATE SET count = count + 1",
            [(rule.name, scope, window) for scope in counts],
        )
        return None

    def prune_sync(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Forget quota counts of windows that have ended."""
        for rule in self.config.rules:
            if rule.action == "quota":
                current = now_ms // (rule.window_s * 1000)
                conn.execute(
                    "DELETE FROM curation_quota WHERE rule = ? AND window < ?", (rule.name, current)
                )

    @staticmethod
    def _scrub(rule: Rule, record: dict) -> bytes:
        for name in rule.fields:
            record.pop(name, None)
        return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
