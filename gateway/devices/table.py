"""The devices table as ``edgefleet gateway devices`` prints it (see edgefleet.tables)."""

from __future__ import annotations

import datetime as dt

from edgefleet.tables import Column
from edgefleet.tables import print_table as _print

COLUMNS = (
    Column("device"),
    Column("state"),
    Column("last seen"),
    Column("agent", narrow=False),
    Column("model"),
    Column("update"),
    Column("health", narrow=False),
    Column("drift", narrow=False),
    Column("spool", right=True, narrow=False),
    Column("drops", right=True, narrow=False),
    Column("records", right=True, narrow=False),
    Column("mcus", narrow=False),
)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _mcus(mcus) -> str:
    return "\n".join(f"{m['name']} {m['version'] or '-'} {m['state']}" for m in mcus) or "-"


def print_table(devices: list[dict], wide: bool = False) -> None:
    rows = []
    for d in devices:
        model = f"{d['model']} v{d['model_version']}" if d.get("model") else "-"
        drift = ("ALARM" if d["drift_alarm"] else "ok") + f" ({d['drift_alarms']})"
        rows.append(
            (
                d["device"],
                d["state"],
                _when(d["last_seen"]),
                d["agent_version"],
                model,
                d["update_state"],
                d["health"],
                drift,
                d["spool_depth"],
                d["spool_dropped"],
                d["records"],
                _mcus(d.get("mcus") or ()),
            )
        )
    _print(COLUMNS, rows, title=f"{len(devices)} devices", wide=wide)
