"""The devices table as ``edgefleet gateway devices`` prints it (rich)."""

from __future__ import annotations

import datetime as dt

from rich.console import Console
from rich.table import Table


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _value(value) -> str:
    return "-" if value is None or value == "" else str(value)


def _mcus(mcus) -> str:
    return "\n".join(f"{m['name']} {m['version'] or '-'} {m['state']}" for m in mcus) or "-"


def print_table(devices: list[dict], console: Console | None = None) -> None:
    table = Table(title=f"{len(devices)} devices")
    columns = (
        "device",
        "state",
        "last seen",
        "agent",
        "model",
        "update",
        "health",
        "drift",
        "spool",
        "drops",
        "records",
        "mcus",
    )
    for column in columns:
        table.add_column(column, no_wrap=column in ("device", "last seen"))
    for d in devices:
        model = f"{d['model']} v{d['model_version']}" if d.get("model") else "-"
        drift = ("ALARM" if d["drift_alarm"] else "ok") + f" ({d['drift_alarms']})"
        table.add_row(
            d["device"],
            d["state"],
            _when(d["last_seen"]),
            _value(d["agent_version"]),
            model,
            _value(d["update_state"]),
            _value(d["health"]),
            drift,
            _value(d["spool_depth"]),
            _value(d["spool_dropped"]),
            str(d["records"]),
            _mcus(d.get("mcus") or ()),
        )
    (console or Console()).print(table)
