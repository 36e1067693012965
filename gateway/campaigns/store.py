"""Campaigns in the gateway's database (schema 3 of ``gateway.store``). All functions run on the
store thread, each change one statement (atomic by itself); ``count_sync`` runs inside the
ingest's transaction, so a sample is counted exactly when its message is stored."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import asdict, dataclass

from protocol.capture import Campaign

RUNNING, ENDED = "running", "ended"


class CampaignError(Exception):
    """A campaign request the gateway refuses; ``status`` is the HTTP answer."""

    status = 400


class UnknownCampaign(CampaignError):
    status = 404


class CampaignConflict(CampaignError):
    status = 409


@dataclass(frozen=True)
class Spec:
    """What the operator asked for: the device-side campaign and the fleet-wide total."""

    name: str
    model: str
    trigger: str
    per_device: int
    total: int
    until_ms: int | None = None
    created_ms: int = 0

    @property
    def campaign(self) -> Campaign:
        return Campaign(self.name, self.model, self.trigger, self.per_device, self.until_ms)


@dataclass(frozen=True)
class Row:
    spec: Spec
    state: str
    reason: str
    received: int
    devices: dict[str, tuple[str, int]]  # device -> (state, samples received)

    def to_json(self, detail: bool = False) -> dict:
        states = Counter(state for state, _ in self.devices.values())
        data = asdict(self.spec) | {
            "state": self.state,
            "reason": self.reason,
            "received": self.received,
            "devices": len(self.devices),
            "devices_by_state": dict(states),
        }
        if detail:
            data["per_device"] = {
                device: {"state": state, "received": received}
                for device, (state, received) in sorted(self.devices.items())
            }
        return data


def create_sync(conn: sqlite3.Connection, spec: Spec) -> None:
    if conn.execute("SELECT 1 FROM campaigns WHERE name = ?", (spec.name,)).fetchone():
        raise CampaignConflict(
            f"campaign {spec.name!r} exists (devices count by name): choose another name"
        )
    spec = Spec(**(asdict(spec) | {"created_ms": int(time.time() * 1000)}))
    conn.execute(
        "INSERT INTO campaigns VALUES (?, ?, ?, '', 0)",
        (spec.name, json.dumps(asdict(spec)), RUNNING),
    )


def load_sync(conn: sqlite3.Connection, name: str | None = None) -> list[Row]:
    query = "SELECT name, data, state, reason, received FROM campaigns"
    rows = conn.execute(query + (" WHERE name = ?" if name else ""), (name,) if name else ())
    out = []
    for campaign, data, state, reason, received in rows.fetchall():
        devices = {
            device: (device_state, count)
            for device, device_state, count in conn.execute(
                "SELECT device, state, received FROM campaign_devices WHERE campaign = ?",
                (campaign,),
            )
        }
        out.append(Row(Spec(**json.loads(data)), state, reason, received, devices))
    if name and not out:
        raise UnknownCampaign(f"no campaign {name!r}")
    return out


def end_sync(conn: sqlite3.Connection, name: str, reason: str) -> bool:
    """End a running campaign; False if it was not running."""
    changed = conn.execute(
        "UPDATE campaigns SET state = ?, reason = ? WHERE name = ? AND state = ?",
        (ENDED, reason, name, RUNNING),
    ).rowcount
    return bool(changed)


def mark_sync(conn: sqlite3.Connection, name: str, device: str, state: str) -> None:
    conn.execute(
        "INSERT INTO campaign_devices VALUES (?, ?, ?, 0) "
        "ON CONFLICT(campaign, device) DO UPDATE SET state = excluded.state",
        (name, device, state),
    )


def count_sync(conn: sqlite3.Connection, device: str, campaigns: Counter) -> None:
    """Samples that arrived from ``device``, by campaign (inside the caller's transaction)."""
    for name, count in campaigns.items():
        if not isinstance(name, str):
            continue
        found = conn.execute(
            "UPDATE campaigns SET received = received + ? WHERE name = ?", (count, name)
        ).rowcount
        if found:
            conn.execute(
                "INSERT INTO campaign_devices VALUES (?, ?, 'sent', ?) "
                "ON CONFLICT(campaign, device) DO UPDATE SET received = received + ?",
                (name, device, count, count),
            )
