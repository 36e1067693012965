"""Cut a telemetry batch into its records' original bytes, checking what the gateway relies on.

The gateway stores and forwards each record as the bytes the device sent (hashes downstream are
over those bytes), so it needs the span of every record in the batch, not a re-serialized copy.

Batches as ``protocol.telemetry.encode_batch`` writes them (compact ASCII JSON, what agents
send) take the fast path: msgspec's decoder checks the whole payload and hands over each record
as its exact bytes (``msgspec.Raw``), then decodes each record to the dict ``json`` would give,
or (``split_batch``, for a gateway that needs no dicts) only the identity fields of all records
in one call, msgspec checking that the rest is JSON.
Anything else, and anything that path does not accept, goes to the scanner:
``json.JSONDecoder.raw_decode`` parses one value and says where it ended, so one pass over the
payload gives both the parsed record and its span, and a refusal names what is wrong. Both paths
accept the same batches and give the same records; the fast one costs about half.

Validation ``identity`` checks the envelope and each record's id (device, boot, seq) and kind:
enough to route, deduplicate and account for records, and about five times cheaper than
``full``, which also runs ``protocol.telemetry.Record.from_json`` on every record. A record that
spans several lines is refused either way: the uplink carries records as NDJSON.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import msgspec

from protocol.telemetry import (
    BODIES,
    BOOT_PATTERN,
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    Record,
    batch_head,
)
from protocol.topics import (
    DEVICE_ID_PATTERN,
    MAX_INT,
    SCHEMA_VERSION,
    ProtocolError,
    reject_constant,
)

_WS = re.compile(r"[ \t\n\r]*")
# Integers and floats keep the C scanner's own parsing here (hooks would cost a Python call per
# number on the hot path); what the gateway reads of a record is range-checked below, and
# ``full`` validation bounds every number.
_DECODER = json.JSONDecoder(parse_constant=reject_constant)
# A record that may nest deeper than this goes to the scanner, whose nesting limit then decides.
_COMPACT_MAX_NESTING = 256


class _Compact(msgspec.Struct):
    schema: int
    device: str
    records: list[msgspec.Raw]


_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT - 1)]


class _Identity(msgspec.Struct):
    """What the identity check reads of a record; msgspec checks the rest is JSON."""

    dev: str
    boot: str
    seq: _Count
    ts_ms: _Count
    kind: str


_COMPACT = msgspec.json.Decoder(_Compact)
_RECORD = msgspec.json.Decoder()
_IDENTITIES = msgspec.json.Decoder(list[_Identity])
_NOT_COMPACT = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def _require(condition: bool, message: str, reason: str = "invalid") -> None:
    if not condition:
        raise ProtocolError(message, reason)


def _scan(text: str) -> tuple[dict[str, Any], list[tuple[Any, str]]]:
    """The batch object's fields, and its ``records`` as ``(parsed, original text)`` pairs."""
    scan, ws = _DECODER.raw_decode, _WS.match
    fields: dict[str, Any] = {}
    records: list[tuple[Any, str]] = []
    i = ws(text, 0).end()
    _require(text[i] == "{", "telemetry payload is not a JSON object", "type")
    i = ws(text, i + 1).end()
    if text[i] == "}":
        i += 1
    else:
        while True:
            key, i = scan(text, i)
            _require(isinstance(key, str) and key not in fields, "bad or repeated key", "json")
            i = ws(text, i).end()
            _require(text[i] == ":", "expected ':'", "json")
            i = ws(text, i + 1).end()
            if key == "records" and text[i] == "[":
                i = ws(text, i + 1).end()
                if text[i] == "]":
                    i += 1
                else:
                    while True:
                        value, end = scan(text, i)
                        records.append((value, text[i:end]))
                        if text[end] != ",":  # compact JSON skips the whitespace scans
                            end = ws(text, end).end()
                        i = end + 1
                        if text[end] == "]":
                            break
                        _require(text[end] == ",", "expected ',' or ']'", "json")
                        if text[i] in " \t\n\r":
                            i = ws(text, i).end()
                    _require(len(records) <= MAX_BATCH_RECORDS, "too many records", "size")
                fields[key] = records
            else:
                fields[key], i = scan(text, i)
            i = ws(text, i).end()
            i += 1
            if text[i - 1] == "}":
                break
            _require(text[i - 1] == ",", "expected ',' or '}'", "json")
            i = ws(text, i).end()
    _require(ws(text, i).end() == len(text), "trailing bytes after the batch", "json")
    return fields, records


def _identity_error(data: Any, device: str, kinds: tuple[str, ...]) -> ProtocolError:
    """Why a record fails the identity check (only called once it has failed)."""
    if not isinstance(data, dict):
        return ProtocolError("record is not an object", "type")
    if data.get("dev") != device:
        return ProtocolError("record of another device in batch")
    kind = data.get("kind")
    if not isinstance(kind, str):
        return ProtocolError("record kind is not a string", "type")
    if kind not in kinds:
        if kind in BODIES:
            return ProtocolError(f"record kind {kind!r} does not belong on this topic")
        return ProtocolError(f"unknown record kind {kind[:40]!r}")
    for key in ("seq", "ts_ms"):
        value = data.get(key)
        if type(value) is not int:
            return ProtocolError(f"record {key} is not an integer", "type")
        if not 0 <= value < MAX_INT:
            return ProtocolError(f"record {key} is out of range", "range")
    return ProtocolError("bad record boot id")


def split_batch(
    payload: bytes, full: bool = False, kinds: tuple[str, ...] = tuple(BODIES)
) -> tuple[str, list[bytes]]:
    """Untrusted batch bytes -> ``(device, [record bytes, ...])`` or ``ProtocolError``: the
    same records as ``split_records``, without building their dicts when it can help it."""
    size = len(payload)
    _require(size <= MAX_BATCH_BYTES, f"batch of {size} bytes is too big", "size")
    compact = None if full else _compact(payload)
    if compact is not None:
        device, start, raws = compact
        try:
            found = _IDENTITIES.decode(payload[start - 1 : -1])  # the records' array
        except _NOT_COMPACT:
            found = None
        if found is not None and _identities_ok(found, device, kinds):
            return device, raws
    device, records = split_records(payload, full, kinds)
    return device, [raw for _, raw in records]


def _identities_ok(found: list[_Identity], device: str, kinds: tuple[str, ...]) -> bool:
    boots = {r.boot for r in found}  # one per device boot: few
    return all(r.dev == device and r.kind in kinds for r in found) and all(
        BOOT_PATTERN.fullmatch(boot) is not None for boot in boots
    )


def split_records(
    payload: bytes, full: bool = False, kinds: tuple[str, ...] = tuple(BODIES)
) -> tuple[str, list[tuple[dict[str, Any], bytes]]]:
    """Untrusted batch bytes -> ``(device, [(parsed record, its bytes), ...])``, with only the
    record ``kinds`` given (those of the topic it came on), or ``ProtocolError``."""
    size = len(payload)
    _require(size <= MAX_BATCH_BYTES, f"batch of {size} bytes is too big", "size")
    split = _split_compact(payload, kinds)
    if split is None:
        return _split_scanned(payload, full, kinds)
    if full:
        for data, _ in split[1]:
            Record.from_json(data)
    return split


def _identity_ok(data: Any, device: str, kinds: tuple[str, ...]) -> bool:
    """The identity check in one expression; ``_identity_error`` explains a failure."""
    return (
        type(data) is dict
        and data.get("dev") == device
        and type(boot := data.get("boot")) is str
        and BOOT_PATTERN.fullmatch(boot) is not None
        and type(seq := data.get("seq")) is int
        and 0 <= seq < MAX_INT
        and type(ts := data.get("ts_ms")) is int
        and 0 <= ts < MAX_INT
        and type(kind := data.get("kind")) is str
        and kind in kinds
    )


def _compact(payload: bytes) -> tuple[str, int, list[bytes]] | None:
    """The device, the length of the head and each record's bytes of a batch exactly as
    ``encode_batch`` writes it; None for any other (the scanner then decides)."""
    if not payload.isascii() or b"\n" in payload or b"\r" in payload:
        return None
    try:
        batch = _COMPACT.decode(payload)
    except _NOT_COMPACT:
        return None
    device, raws = batch.device, [bytes(raw) for raw in batch.records]
    if not 0 < len(raws) <= MAX_BATCH_RECORDS or DEVICE_ID_PATTERN.fullmatch(device) is None:
        return None
    # The head and the length pin the layout: the three keys once each, no spacing.
    head = batch_head(device)
    size = len(head) + sum(map(len, raws)) + len(raws) + 1
    if len(payload) != size or not payload.startswith(head):
        return None
    for raw in raws:  # nesting needs two bytes a level: short records are never too deep
        if len(raw) > 2 * _COMPACT_MAX_NESTING and raw.count(b"{") + raw.count(b"[") > (
            _COMPACT_MAX_NESTING
        ):
            return None
    return device, len(head), raws


def _split_compact(
    payload: bytes, kinds: tuple[str, ...]
) -> tuple[str, list[tuple[dict[str, Any], bytes]]] | None:
    """``_compact``, each record decoded and passing the identity check; or None."""
    compact = _compact(payload)
    if compact is None:
        return None
    device, _, raws = compact
    out = []
    decode = _RECORD.decode
    for raw in raws:
        try:
            data = decode(raw)
        except _NOT_COMPACT:
            return None
        if not _identity_ok(data, device, kinds):
            return None
        out.append((data, raw))
    return device, out


def _split_scanned(
    payload: bytes, full: bool, kinds: tuple[str, ...]
) -> tuple[str, list[tuple[dict[str, Any], bytes]]]:
    """Any batch the contract allows (spacing, key order), or ``ProtocolError`` naming what is
    wrong."""
    try:
        text = payload.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"telemetry payload is not UTF-8 (byte {exc.start})", "encoding"
        ) from None
    try:
        fields, records = _scan(text)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("telemetry payload is nested too deeply", "nesting") from None
    except (ValueError, IndexError) as exc:
        raise ProtocolError(f"telemetry payload is not JSON: {exc}", "json") from None
    schema = fields.get("schema")
    _require(schema == SCHEMA_VERSION, f"unsupported telemetry schema {schema!r:.40}", "schema")
    device = fields.get("device")
    _require(isinstance(device, str), "batch device is not a string", "type")
    _require(DEVICE_ID_PATTERN.fullmatch(device) is not None, "bad batch device")
    _require(fields.get("records") is records and records, "bad record list")
    out = []
    for data, text in records:
        if not _identity_ok(data, device, kinds):
            raise _identity_error(data, device, kinds)
        _require("\n" not in text and "\r" not in text, "record spans several lines")
        if full:
            Record.from_json(data)
        out.append((data, text.encode()))
    return device, out
