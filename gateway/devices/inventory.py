"""Which devices exist and how they are doing, from their retained status, events and telemetry.

The reducers (``apply_status``, ``apply_event``, ``touch``) are pure: old row + message -> new
row. The inventory applies them on the store thread inside the ingest transaction, so a message
is acknowledged only once the row it changed is on disk, and the in-memory copy is replaced on
the event loop only after that commit.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.store import Store
from protocol.topics import Event, Status

UPDATE_EVENTS = {
    "update_offered": "OFFERED",
    "update_downloaded": "VERIFIED",
    "update_installed": "INSTALLED",
    "update_trial": "TRIAL",
    "update_committed": "COMMITTED",
    "update_rolled_back": "ROLLED_BACK",
}


@dataclass(frozen=True)
class Device:
    device: str
    first_seen: float
    last_seen: float
    state: str = "unknown"  # online / offline from status; unknown before any status
    agent_version: str = ""
    model: str = ""
    model_version: int | None = None
    update_state: str = ""
    health: str = "unknown"
    drift_alarm: bool = False
    drift_alarms: int = 0  # drift_alarm events seen
    max_psi: float | None = None
    spool_depth: int | None = None
    spool_dropped: int | None = None
    records: int = 0  # telemetry records received by this gateway
    last_event: str = ""
    last_event_at: float | None = None
    last_rollout: str = ""  # the rollout the last event with one named, and its reason: a
    last_reason: str = ""  # verdict acknowledged just before a crash is replayed from them
    hardware_tags: tuple[str, ...] = ()
    arena_bytes: int | None = None
    mcus: tuple[dict, ...] = ()  # attached MCUs: name, version, state

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _base(row: Device | None, device: str, now: float) -> Device:
    return row or Device(device=device, first_seen=now, last_seen=now)


def apply_status(row: Device | None, status: Status, now: float) -> Device:
    row = dataclasses.replace(_base(row, status.device, now), last_seen=now, state=status.state)
    if status.state != "online":
        return row
    return dataclasses.replace(
        row,
        agent_version=status.agent_version,
        model=status.model.name if status.model else "",
        model_version=status.model.version if status.model else None,
        update_state=status.update_state,
        health=status.health,
        drift_alarm=status.drift.alarm if status.drift else False,
        max_psi=status.drift.max_psi if status.drift else None,
        spool_depth=status.spool.depth if status.spool else None,
        spool_dropped=status.spool.dropped if status.spool else None,
        hardware_tags=status.hardware_tags,
        arena_bytes=status.arena_bytes,
        mcus=tuple(mcu.to_json() for mcu in status.mcus),
    )


def apply_event(row: Device | None, event: Event, now: float) -> Device:
    row = dataclasses.replace(
        _base(row, event.device, now), last_seen=now, last_event=event.kind, last_event_at=now
    )
    rollout = event.detail.get("rollout")
    if isinstance(rollout, str):
        reason = event.detail.get("reason", "")
        row = dataclasses.replace(row, last_rollout=rollout, last_reason=str(reason))
    if event.kind == "drift_alarm":
        return dataclasses.replace(row, drift_alarm=True, drift_alarms=row.drift_alarms + 1)
    if event.kind == "drift_cleared":
        return dataclasses.replace(row, drift_alarm=False)
    if event.kind in UPDATE_EVENTS and "mcu" not in event.detail:  # the model's updater
        return dataclasses.replace(row, update_state=UPDATE_EVENTS[event.kind])
    return row


def touch(row: Device | None, device: str, records: int, now: float) -> Device:
    row = _base(row, device, now)
    return dataclasses.replace(row, last_seen=now, records=row.records + records)


class Inventory:
    """The devices table and its in-memory copy (``devices``), keyed by device id."""

    def __init__(self, store: Store):
        self.store = store
        self.devices: dict[str, Device] = {}

    async def open(self) -> Inventory:
        rows = await self.store.run(
            lambda conn: conn.execute("SELECT data FROM devices").fetchall()
        )
        for (data,) in rows:
            device = Device(**json.loads(data))
            self.devices[device.device] = device
        return self

    @staticmethod
    def save_sync(conn: sqlite3.Connection, changed: Iterable[Device]) -> None:
        conn.executemany(
            "INSERT INTO devices(device, data) VALUES (?, ?) "
            "ON CONFLICT(device) DO UPDATE SET data = excluded.data",
            [(d.device, json.dumps(d.to_json())) for d in changed],
        )

    def replace(self, changed: Iterable[Device]) -> None:
        for device in changed:
            self.devices[device.device] = device

    def online(self) -> int:
        return sum(1 for d in list(self.devices.values()) if d.state == "online")

    def snapshot(self) -> list[Device]:
        return sorted(self.devices.values(), key=lambda d: d.device)
