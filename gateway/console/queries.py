"""What a browser sends, checked: the device list's query parameters and the rollout form.

Everything here is outside input. Each function returns a checked value or raises
``QueryError`` whose message is one line naming the field; nothing else escapes, whatever the
bytes (the hypothesis tests hold them to that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.devices.inventory import Device

MAX_TEXT = 128
PAGE_SIZES = (25, 50, 100, 200)
SORT_KEYS = ("device", "model", "version", "update", "state", "last_seen", "spool")
STATES = ("", "online", "offline", "unknown")


class QueryError(ValueError):
    """One line naming the field that is wrong."""


def _text(params: Mapping[str, str], key: str) -> str:
    value = params.get(key, "")
    if len(value) > MAX_TEXT:
        raise QueryError(f"{key}: at most {MAX_TEXT} characters")
    if not value.isprintable():
        raise QueryError(f"{key}: must be printable text")
    return value.strip()


def _int(params: Mapping[str, str], key: str, default: int | None, low: int, high: int):
    value = params.get(key, "").strip()
    if value == "":
        return default
    if len(value) > 12 or not value.isascii() or not value.isdigit():
        raise QueryError(f"{key}: must be a whole number")
    number = int(value)
    if not low <= number <= high:
        raise QueryError(f"{key}: must be from {low} to {high}")
    return number


@dataclass(frozen=True)
class DeviceQuery:
    search: str = ""  # part of the device id
    model: str = ""
    version: int | None = None
    update: str = ""  # update state, exactly
    state: str = ""  # online / offline / unknown
    sort: str = "device"
    descending: bool = False
    page: int = 1
    per_page: int = 50

    def params(self, **changes) -> dict[str, str]:
        """This query as URL parameters (for links), with ``changes`` applied."""
        values = {
            "q": self.search,
            "model": self.model,
            "version": "" if self.version is None else str(self.version),
            "update": self.update,
            "state": self.state,
            "sort": self.sort,
            "order": "desc" if self.descending else "asc",
            "page": str(self.page),
            "per_page": str(self.per_page),
        } | {k: str(v) for k, v in changes.items()}
        return {k: v for k, v in values.items() if v != ""}


def device_query(params: Mapping[str, str]) -> DeviceQuery:
    sort = params.get("sort", "device")
    if sort not in SORT_KEYS:
        raise QueryError(f"sort: one of {', '.join(SORT_KEYS)}")
    order = params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise QueryError("order: asc or desc")
    state = params.get("state", "")
    if state not in STATES:
        raise QueryError("state: online, offline or unknown")
    per_page = _int(params, "per_page", 50, 1, max(PAGE_SIZES))
    if per_page not in PAGE_SIZES:
        raise QueryError(f"per_page: one of {', '.join(map(str, PAGE_SIZES))}")
    return DeviceQuery(
        search=_text(params, "q"),
        model=_text(params, "model"),
        version=_int(params, "version", None, 0, 2**31 - 1),
        update=_text(params, "update"),
        state=state,
        sort=sort,
        descending=order == "desc",
        page=_int(params, "page", 1, 1, 1_000_000),
        per_page=per_page,
    )


def _sort_key(sort: str):
    keys = {
        "device": lambda d: d.device,
        "model": lambda d: (d.model, d.device),
        "version": lambda d: (d.model_version is None, d.model_version or 0, d.device),
        "update": lambda d: (d.update_state, d.device),
        "state": lambda d: (d.state, d.device),
        "last_seen": lambda d: (d.last_seen, d.device),
        "spool": lambda d: (d.spool_depth is None, d.spool_depth or 0, d.device),
    }
    return keys[sort]


def select(devices: list[Device], query: DeviceQuery) -> tuple[list[Device], int]:
    """The page of devices the query asks for, and how many match in all."""
    needle = query.search.casefold()
    matching = [
        d
        for d in devices
        if (not needle or needle in d.device.casefold())
        and (not query.model or d.model == query.model)
        and (query.version is None or d.model_version == query.version)
        and (not query.update or d.update_state == query.update)
        and (not query.state or d.state == query.state)
    ]
    matching.sort(key=_sort_key(query.sort), reverse=query.descending)
    start = (query.page - 1) * query.per_page
    return matching[start : start + query.per_page], len(matching)


def _number(form: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    text = form.get(key, "").strip()
    if text == "":
        return default
    try:
        value = float(text) if len(text) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise QueryError(f"{key}: a number from {low:g} to {high:g}")
    return value


def rollout_body(form: Mapping[str, str]) -> dict:
    """The rollout form -> the JSON body of ``POST /v1/rollouts``; the admin API then checks
    the plan itself (stages rising to 100, the release served) exactly as for the CLI."""
    model = _text(form, "model")
    if not model:
        raise QueryError("model: required")
    version = _int(form, "version", None, 1, 2**31 - 1)
    if version is None:
        raise QueryError("version: required")
    stages_text = _text(form, "stages") or "100"
    parts = [p.strip() for p in stages_text.split(",")]
    if len(parts) > 20 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise QueryError("stages: whole percentages separated by commas, such as 10,50,100")
    return {
        "model": model,
        "version": version,
        "stages": [int(p) for p in parts],
        "soak_s": _number(form, "soak_s", 0.0, 0, 30 * 86400),
        "max_failure_rate": _number(form, "max_failure_rate", 0.05, 0, 1),
        "auto_rollback": form.get("auto_rollback") == "on",
    }
