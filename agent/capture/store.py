"""Campaigns, their captured counts and the hourly counter, in the sample spool's database.

They change in the transaction that stores the samples they count (``counted``), so a crash
at any point leaves counts that match the samples kept: a restart never lets a campaign exceed
``per_device`` nor the device exceed ``max_per_hour``. A campaign's count belongs to its name:
a command that replaces a campaign keeps it. Ended campaigns are kept (the newest
``MAX_ENDED``) so that a command delivered again is recognised by its id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.capture import Campaign

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    trigger TEXT NOT NULL,
    per_device INTEGER NOT NULL,
    until_ms INTEGER,
    captured INTEGER NOT NULL DEFAULT 0,
    command TEXT NOT NULL,
    ended TEXT,
    changed_ms INTEGER NOT NULL
)
"""
MAX_ENDED = 64


@dataclass
class Entry:
    campaign: Campaign
    captured: int
    command: str
    ended: str | None = None


def load(db: sqlite3.Connection) -> tuple[dict[str, Entry], int, int]:
    """Every campaign kept, and the hourly counter: ``(campaigns, hour, count)``."""
    found = {}
    for name, model, trigger, per_device, until, captured, command, ended in db.execute(
        "SELECT name, model, trigger, per_device, until_ms, captured, command, ended"
        " FROM campaigns ORDER BY changed_ms, name"
    ):
        found[name] = Entry(
            Campaign(name, model, trigger, per_device, until), captured, command, ended
        )
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('hour', 'hour_count')"))
    return found, int(meta.get("hour", 0)), int(meta.get("hour_count", 0))


def save(db: sqlite3.Connection, campaign: Campaign, command: str, now_ms: int) -> int:
    """Start or replace ``campaign``; returns its captured count (kept from a campaign of the
    same name)."""
    db.execute(
        "INSERT INTO campaigns (name, model, trigger, per_device, until_ms, command, changed_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET model = excluded.model,"
        " trigger = excluded.trigger, per_device = excluded.per_device,"
        " until_ms = excluded.until_ms, command = excluded.command, ended = NULL,"
        " changed_ms = excluded.changed_ms",
        (
            campaign.name,
            campaign.model,
            campaign.trigger,
            campaign.per_device,
            campaign.until_ms,
            command,
            now_ms,
        ),
    )
    return db.execute("SELECT captured FROM campaigns WHERE name = ?", (campaign.name,)).fetchone()[
        0
    ]


def end(db: sqlite3.Connection, name: str, reason: str, now_ms: int) -> None:
    db.execute(
        "UPDATE campaigns SET ended = ?, changed_ms = ? WHERE name = ?", (reason, now_ms, name)
    )
    db.execute(
        "DELETE FROM campaigns WHERE ended IS NOT NULL AND name NOT IN (SELECT name FROM"
        " campaigns WHERE ended IS NOT NULL ORDER BY changed_ms DESC LIMIT ?)",
        (MAX_ENDED,),
    )


def counted(db: sqlite3.Connection, taken: Mapping[str, int], hour: int, hour_count: int) -> None:
    """Add samples to their campaigns' counts and set the hourly counter."""
    db.executemany(
        "UPDATE campaigns SET captured = captured + ? WHERE name = ?",
        [(count, name) for name, count in taken.items()],
    )
    db.executemany("REPLACE INTO meta VALUES (?, ?)", [("hour", hour), ("hour_count", hour_count)])
