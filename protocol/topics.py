"""MQTT topics between a device and its gateway, and the status, event and command payloads.

Every payload is a JSON object with a ``schema`` version and a hard size limit. Decoders take
untrusted bytes and either return a validated, frozen object or raise ``ProtocolError``; no other
exception escapes them, so a receiver can count and skip bad messages without crashing.

Topics (prefix default ``edgefleet/<site>``)::

    <prefix>/dev/<device>/telemetry   device -> gateway  QoS 1            telemetry batch
    <prefix>/dev/<device>/status      device -> gateway  QoS 1, retained  Status (will: offline)
    <prefix>/dev/<device>/events      device -> gateway  QoS 1            Event
    <prefix>/dev/<device>/cmd         gateway -> device  QoS 1            Command
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from protocol.mcu_image import VERSION_TEXT

SCHEMA_VERSION = 1
DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SITE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KINDS = ("telemetry", "samples", "status", "events", "cmd")

MAX_STATUS_BYTES = 16 * 1024
MAX_EVENT_BYTES = 8 * 1024
MAX_CMD_BYTES = 16 * 1024
MAX_DETAIL_KEYS = 32
MAX_TEXT = 1024
MAX_HARDWARE_TAGS = 32
MAX_MCUS = 16

STATES = ("online", "offline")
EVENT_KINDS = (
    "started",
    "stopping",
    "model_loaded",
    "model_error",
    "drift_alarm",
    "drift_cleared",
    "command_rejected",
    "update_offered",
    "update_downloaded",
    "update_installed",
    "update_trial",
    "update_committed",
    "update_rolled_back",
    "update_refused",
    "update_failed",
    "update_blocked",  # cannot fetch or verify the offered update yet; retrying
    "campaign_started",
    "campaign_refused",  # capture disabled, or max_campaigns already running
    "campaign_ended",  # reason: per_device | until | stopped
    "error",
)
COMMAND_KINDS = ("update", "rollback", "config", "campaign", "campaign_stop")
MAX_RETRY_FOR_S = 7 * 86400
MAX_PREFIX = 128


# What a refusal is about, in a few words a receiver can count by (metrics labels).
REASONS = (
    "size",
    "encoding",
    "json",
    "nesting",
    "non_finite",
    "range",
    "type",
    "schema",
    "invalid",
)
MAX_INT = 2**63  # integers on the wire fit a signed 64-bit column: |n| < 2**63
MAX_INT_DIGITS = 20  # longer digit strings are refused before they are converted
_SURROGATE = re.compile("[\ud800-\udfff]")


class ProtocolError(ValueError):
    """Bytes from the other side that do not follow the contract; ``reason`` is one of
    ``REASONS``, the message says exactly what is wrong."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


def _require(condition: bool, message: str, reason: str = "invalid") -> None:
    if not condition:
        raise ProtocolError(message, reason)


# -- topics -------------------------------------------------------------------------------------


def default_prefix(site: str) -> str:
    return f"edgefleet/{site}"


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot start edgefleet's topics (None: it can). One rule for the agent,
    the gateway and the encoders: MQTT wildcards or a leading ``$`` would make subscriptions
    mean something else, and an empty level would shift ``dev/<id>/<kind>``."""
    if not prefix or len(prefix) > MAX_PREFIX:
        return f"must be 1..{MAX_PREFIX} characters"
    if set(prefix) & set("#+\x00") or prefix.startswith("$"):
        return "must not hold MQTT wildcards (#, +), NUL or start with '$'"
    if "" in prefix.split("/"):
        return "must not start or end with '/' or hold '//'"
    return None


def device_topic(prefix: str, device: str, kind: str) -> str:
    """``<prefix>/dev/<device>/<kind>``; refuses ids and kinds outside the contract."""
    _require(DEVICE_ID_PATTERN.fullmatch(device) is not None, f"bad device id {device!r}")
    _require(kind in KINDS, f"unknown topic kind {kind!r}")
    _require(prefix_problem(prefix) is None, f"bad topic prefix {prefix[:80]!r}")
    return f"{prefix.rstrip('/')}/dev/{device}/{kind}"


def parse_device_topic(topic: str) -> tuple[str, str, str]:
    """``<prefix>/dev/<device>/<kind>`` -> ``(prefix, device, kind)``."""
    parts = topic.split("/")
    _require(len(parts) >= 4 and parts[-3] == "dev", f"not a device topic: {topic[:200]!r}")
    prefix, device, kind = "/".join(parts[:-3]), parts[-2], parts[-1]
    _require(bool(prefix), "topic has no prefix")
    _require(DEVICE_ID_PATTERN.fullmatch(device) is not None, f"bad device id {device[:80]!r}")
    _require(kind in KINDS, f"unknown topic kind {kind[:40]!r}")
    return prefix, device, kind


# -- JSON helpers shared by the payload codecs ---------------------------------------------------


def reject_constant(name: str) -> Any:
    """``parse_constant`` for ``json``: NaN and the infinities are not JSON numbers."""
    raise ProtocolError(f"non-finite number {name} in payload", "non_finite")


def _bounded_int(text: str) -> int:
    """``parse_int`` for ``json``: a number too long to be a 64-bit integer is refused before it
    is converted (``int()`` of thousands of digits is slow, and floats of it overflow)."""
    digits = len(text) - (text[0] == "-")
    _require(digits <= MAX_INT_DIGITS, f"integer of {digits} digits in payload", "range")
    return int(text)


def _finite_float(text: str) -> float:
    """``parse_float`` for ``json``: ``1e400`` would otherwise parse as infinity."""
    value = float(text)
    _require(math.isfinite(value), f"number {text[:40]} is out of float range", "non_finite")
    return value


def decode_json(payload: bytes, what: str) -> Any:
    """Untrusted UTF-8 bytes -> a JSON value with bounded integers and finite floats, or
    ``ProtocolError`` saying which of those it is not."""
    try:
        text = payload.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} payload is not UTF-8 (byte {exc.start})", "encoding") from None
    try:
        data = json.loads(
            text, parse_constant=reject_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(f"{what} payload is nested too deeply", "nesting") from None
    except ValueError as exc:
        raise ProtocolError(f"{what} payload is not JSON: {exc}", "json") from None
    return data


def load_object(payload: bytes, limit: int, what: str) -> dict[str, Any]:
    """Untrusted bytes -> a JSON object of the current schema, or ``ProtocolError``."""
    _require(isinstance(payload, bytes | bytearray), f"{what} payload is not bytes", "type")
    _require(
        len(payload) <= limit, f"{what} payload of {len(payload)} bytes exceeds {limit}", "size"
    )
    data = decode_json(bytes(payload), what)
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} payload is not a JSON object", "type")
    schema = data.get("schema")
    _require(schema == SCHEMA_VERSION, f"unsupported {what} schema {schema!r:.40}", "schema")
    return data


def check_text(value: str, what: str) -> str:
    """A string from the wire: short, and encodable (no lone surrogates from ``\\ud800``)."""
    _require(len(value) <= MAX_TEXT, f"{what} is too long", "size")
    _require(_SURROGATE.search(value) is None, f"{what} is not valid Unicode", "encoding")
    return value


def check_int(value: int, what: str) -> int:
    _require(-MAX_INT < value < MAX_INT, f"{what} is out of range", "range")
    return value


def dump_object(data: dict[str, Any], limit: int, what: str) -> bytes:
    raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    _require(len(raw) <= limit, f"{what} payload of {len(raw)} bytes exceeds {limit}")
    return raw


_T = TypeVar("_T")
_D = TypeVar("_D")


@overload
def get(data: dict[str, Any], key: str, kind: type[_T]) -> _T: ...
@overload
def get(data: dict[str, Any], key: str, kind: type[_T], default: _D) -> _T | _D: ...
@overload
def get(data: dict[str, Any], key: str, kind: tuple[type, ...], default: Any = ...) -> Any: ...
def get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``data[key]`` checked to be of ``kind`` (bool is never an int here)."""
    if key not in data:
        _require(default is not ..., f"missing field {key!r}")
        return default
    value = data[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind))
    _require(ok, f"field {key!r} has the wrong type", "type")
    if isinstance(value, float):
        _require(math.isfinite(value), f"field {key!r} is not finite", "non_finite")
    elif isinstance(value, int) and not isinstance(value, bool):
        check_int(value, f"field {key!r}")
    elif isinstance(value, str):
        check_text(value, f"field {key!r}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _name(data: dict[str, Any], key: str) -> str:
    value = get(data, key, str)
    _require(NAME_PATTERN.fullmatch(value) is not None, f"field {key!r} is not a name")
    return value


def _optional_name(data: dict[str, Any], key: str) -> str | None:
    value = get(data, key, str, None)
    if value is not None:
        _require(NAME_PATTERN.fullmatch(value) is not None, f"field {key!r} is not a name")
    return value


def _scalars(data: dict[str, Any], key: str) -> dict[str, str | int | float | bool | None]:
    """A small flat object of scalars (event details, config changes)."""
    value = get(data, key, dict, {})
    _require(len(value) <= MAX_DETAIL_KEYS, f"field {key!r} has too many keys", "size")
    for name, item in value.items():
        _require(len(name) <= 64, f"field {key!r} has a key that is too long", "size")
        check_text(name, f"a key of field {key!r}")
        what = f"field {key!r}.{name}"
        _require(
            item is None or isinstance(item, str | int | float), f"{what} is not a scalar", "type"
        )
        if isinstance(item, float):
            _require(math.isfinite(item), f"{what} is not finite", "non_finite")
        elif isinstance(item, int) and not isinstance(item, bool):
            check_int(item, what)
        elif isinstance(item, str):
            check_text(item, what)
    return dict(value)


def _device(data: dict[str, Any]) -> str:
    device = get(data, "device", str)
    _require(DEVICE_ID_PATTERN.fullmatch(device) is not None, "bad device id")
    return device


def _non_negative(data: dict[str, Any], key: str) -> int:
    value = get(data, key, int)
    _require(value >= 0, f"field {key!r} is negative", "range")
    return value


# -- status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> ModelInfo:
        _require(isinstance(data, dict), "model is not an object", "type")
        sha = get(data, "sha256", str)
        _require(re.fullmatch(r"[0-9a-f]{64}", sha) is not None, "bad model sha256")
        return cls(_name(data, "name"), _non_negative(data, "version"), sha)


@dataclass(frozen=True)
class DriftInfo:
    """The last drift window: samples in it, worst PSI, and whether it crossed the alarm."""

    window: int
    max_psi: float
    alarm: bool
    compared: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "max_psi": round(self.max_psi, 6),
            "alarm": self.alarm,
            "compared": self.compared,
        }

    @classmethod
    def from_json(cls, data: Any) -> DriftInfo:
        _require(isinstance(data, dict), "drift is not an object", "type")
        max_psi = float(get(data, "max_psi", (int, float)))
        _require(max_psi >= 0, "negative psi", "range")
        return cls(
            _non_negative(data, "window"),
            max_psi,
            get(data, "alarm", bool),
            get(data, "compared", bool),
        )


@dataclass(frozen=True)
class SpoolInfo:
    depth: int
    bytes: int
    cap_bytes: int
    dropped: int
    produced: int

    def to_json(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "cap_bytes": self.cap_bytes,
            "dropped": self.dropped,
            "produced": self.produced,
        }

    @classmethod
    def from_json(cls, data: Any) -> SpoolInfo:
        _require(isinstance(data, dict), "spool is not an object", "type")
        keys = ("depth", "bytes", "cap_bytes", "dropped", "produced")
        return cls(*(_non_negative(data, key) for key in keys))


@dataclass(frozen=True)
class McuInfo:
    """An MCU attached to the device: the image name it tracks, the version of the image it
    keeps (as its MCUboot header says; None while unknown), and ``state``: ok, updating,
    unreachable, failed (the last update did not take) or unknown (not asked yet)."""

    name: str
    version: str | None
    state: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "state": self.state}

    @classmethod
    def from_json(cls, data: Any) -> McuInfo:
        _require(isinstance(data, dict), "mcu is not an object", "type")
        version = get(data, "version", (str, type(None)))
        _require(version is None or VERSION_TEXT.fullmatch(version) is not None, "bad mcu version")
        return cls(_name(data, "name"), version, _name(data, "state"))


@dataclass(frozen=True)
class Status:
    """The device's retained state. The last will is ``Status.offline(device)``."""

    device: str
    state: str
    ts_ms: int
    agent_version: str = ""
    boot: str = ""
    model: ModelInfo | None = None
    health: str = "unknown"
    update_state: str = "IDLE"
    slots: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    drift: DriftInfo | None = None
    spool: SpoolInfo | None = None
    counters: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    hardware_tags: tuple[str, ...] = ()  # what the device offers, matched by a release's tags
    arena_bytes: int | None = None  # tensor arena a model may use on this device
    mcus: tuple[McuInfo, ...] = ()  # attached MCUs; absent from payloads of older agents

    @classmethod
    def offline(cls, device: str) -> Status:
        return cls(device=device, state="offline", ts_ms=0)

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "device": self.device,
            "state": self.state,
            "ts_ms": self.ts_ms,
        }
        if self.state == "online":
            data |= {
                "agent_version": self.agent_version,
                "boot": self.boot,
                "model": self.model.to_json() if self.model else None,
                "health": self.health,
                "update_state": self.update_state,
                "slots": self.slots,
                "drift": self.drift.to_json() if self.drift else None,
                "spool": self.spool.to_json() if self.spool else None,
                "counters": self.counters,
                "hardware": {"tags": list(self.hardware_tags), "arena_bytes": self.arena_bytes},
                "mcus": [mcu.to_json() for mcu in self.mcus],
            }
        return dump_object(data, MAX_STATUS_BYTES, "status")

    @classmethod
    def decode(cls, payload: bytes) -> Status:
        data = load_object(payload, MAX_STATUS_BYTES, "status")
        state = get(data, "state", str)
        _require(state in STATES, f"unknown state {state!r}")
        model, drift, spool = (
            get(data, key, (dict, type(None)), None) for key in ("model", "drift", "spool")
        )
        mcus = get(data, "mcus", list, [])
        _require(len(mcus) <= MAX_MCUS, "too many mcus", "size")
        return cls(
            device=_device(data),
            state=state,
            ts_ms=_non_negative(data, "ts_ms"),
            agent_version=get(data, "agent_version", str, ""),
            boot=get(data, "boot", str, ""),
            model=ModelInfo.from_json(model) if model is not None else None,
            health=get(data, "health", str, "unknown"),
            update_state=get(data, "update_state", str, "IDLE"),
            slots=_scalars(data, "slots"),
            drift=DriftInfo.from_json(drift) if drift is not None else None,
            spool=SpoolInfo.from_json(spool) if spool is not None else None,
            counters=_scalars(data, "counters"),
            **_hardware(get(data, "hardware", dict, {})),
            mcus=tuple(McuInfo.from_json(mcu) for mcu in mcus),
        )


def _hardware(data: dict[str, Any]) -> dict[str, Any]:
    tags = get(data, "tags", list, [])
    _require(len(tags) <= MAX_HARDWARE_TAGS, "too many hardware tags", "size")
    _require(
        all(isinstance(t, str) and NAME_PATTERN.fullmatch(t) for t in tags), "bad hardware tag"
    )
    arena = get(data, "arena_bytes", (int, type(None)), None)
    _require(arena is None or arena >= 0, "field 'arena_bytes' is negative")
    return {"hardware_tags": tuple(tags), "arena_bytes": arena}


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    device: str
    ts_ms: int
    kind: str
    detail: dict[str, str | int | float | bool | None] = field(default_factory=dict)

    def encode(self) -> bytes:
        _require(self.kind in EVENT_KINDS, f"unknown event kind {self.kind!r}")
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "device": self.device,
            "ts_ms": self.ts_ms,
            "kind": self.kind,
            "detail": self.detail,
        }
        return dump_object(data, MAX_EVENT_BYTES, "event")

    @classmethod
    def decode(cls, payload: bytes) -> Event:
        data = load_object(payload, MAX_EVENT_BYTES, "event")
        kind = get(data, "kind", str)
        _require(kind in EVENT_KINDS, f"unknown event kind {kind!r}")
        return cls(_device(data), _non_negative(data, "ts_ms"), kind, _scalars(data, "detail"))


# -- commands -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """What the gateway asks of a device.

    ``update``: model, version, rollout, repository (an http(s) URL), and how long the device
    keeps retrying an update it cannot fetch or verify (``retry_for_s``); ``rollback``: model
    and optionally the version to return to; ``config``: a flat object of settings to change;
    ``campaign``: model and a campaign as settings (``protocol.capture.Campaign``);
    ``campaign_stop``: ``settings = {"campaign": name}``.
    """

    id: str
    kind: str
    model: str | None = None
    version: int | None = None
    rollout: str | None = None
    repository: str | None = None
    settings: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    retry_for_s: int | None = None

    def encode(self) -> bytes:
        data: dict[str, Any] = {"schema": SCHEMA_VERSION, "id": self.id, "kind": self.kind}
        for key in ("model", "version", "rollout", "repository", "retry_for_s"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.settings:
            data["settings"] = self.settings
        raw = dump_object(data, MAX_CMD_BYTES, "command")
        Command.decode(raw)  # an encoder never emits what its decoder would refuse
        return raw

    @classmethod
    def decode(cls, payload: bytes) -> Command:
        data = load_object(payload, MAX_CMD_BYTES, "command")
        command_id = get(data, "id", str)
        _require(re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", command_id) is not None, "bad command id")
        kind = get(data, "kind", str)
        _require(kind in COMMAND_KINDS, f"unknown command kind {kind!r}")
        version = get(data, "version", (int, type(None)), None)
        _require(version is None or version >= 1, "version must be >= 1")
        command = cls(
            id=command_id,
            kind=kind,
            model=_optional_name(data, "model"),
            version=version,
            rollout=get(data, "rollout", (str, type(None)), None),
            repository=get(data, "repository", (str, type(None)), None),
            settings=_scalars(data, "settings"),
            retry_for_s=get(data, "retry_for_s", (int, type(None)), None),
        )
        _require(
            command.retry_for_s is None or 0 <= command.retry_for_s <= MAX_RETRY_FOR_S,
            f"retry_for_s must be from 0 to {MAX_RETRY_FOR_S}",
        )
        if kind == "update":
            _require(
                command.model is not None and command.version is not None,
                "update needs model and version",
            )
            _require(
                command.repository is not None
                and re.match(r"https?://", command.repository) is not None,
                "update needs an http(s) repository URL",
            )
        if kind == "rollback":
            _require(command.model is not None, "rollback needs model")
        if kind == "config":
            _require(bool(command.settings), "config needs settings")
        if kind == "campaign":
            from protocol.capture import Campaign  # it builds on this module

            Campaign.from_settings(command.model, command.settings)
        if kind == "campaign_stop":
            _require(
                isinstance(command.settings.get("campaign"), str),
                "campaign_stop needs the campaign's name",
            )
        return command
