"""Cut a telemetry batch into its records' original bytes, checking what the gateway relies on.

The gateway stores and forwards each record as the bytes the device sent (hashes downstream are
over those bytes), so it needs the span of every record in the batch, not a re-serialized copy.
``json.JSONDecoder.raw_decode`` parses one value and says where it ended, so one pass over the
payload gives both the parsed record and its span.

Validation ``identity`` checks the envelope and each record's id (device, boot, seq) and kind:
enough to route, deduplicate and account for records, and about five times cheaper than
``full``, which also runs ``protocol.telemetry.Record.from_json`` on every record. A record that
spans several lines is refused either way: the uplink carries records as NDJSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from protocol.telemetry import BODIES, BOOT_PATTERN, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, Record
from protocol.topics import DEVICE_ID_PATTERN, SCHEMA_VERSION, ProtocolError

_WS = re.compile(r"[ \t\n\r]*")


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"non-finite number {name} in payload")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolError(message)


def _scan(text: str) -> tuple[dict[str, Any], list[tuple[Any, str]]]:
    """The batch object's fields, and its ``records`` as ``(parsed, original text)`` pairs."""
    scan, ws = _DECODER.raw_decode, _WS.match
    fields: dict[str, Any] = {}
    records: list[tuple[Any, str]] = []
    i = ws(text, 0).end()
    _require(text[i] == "{", "telemetry payload is not a JSON object")
    i = ws(text, i + 1).end()
    if text[i] == "}":
        i += 1
    else:
        while True:
            key, i = scan(text, i)
            _require(isinstance(key, str) and key not in fields, "bad or repeated key")
            i = ws(text, i).end()
            _require(text[i] == ":", "expected ':'")
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
                        _require(text[end] == ",", "expected ',' or ']'")
                        if text[i] in " \t\n\r":
                            i = ws(text, i).end()
                    _require(len(records) <= MAX_BATCH_RECORDS, "too many records")
                fields[key] = records
            else:
                fields[key], i = scan(text, i)
            i = ws(text, i).end()
            i += 1
            if text[i - 1] == "}":
                break
            _require(text[i - 1] == ",", "expected ',' or '}'")
            i = ws(text, i).end()
    _require(ws(text, i).end() == len(text), "trailing bytes after the batch")
    return fields, records


def _identity_error(data: Any, device: str) -> str:
    """Why a record fails the identity check (only called once it has failed)."""
    if not isinstance(data, dict):
        return "record is not an object"
    if data.get("dev") != device:
        return "record of another device in batch"
    if data.get("kind") not in BODIES:
        return "unknown record kind"
    return "bad record boot, seq or ts_ms"


def split_batch(payload: bytes, full: bool = False) -> tuple[str, list[bytes]]:
    """Untrusted batch bytes -> ``(device, [record bytes, ...])`` or ``ProtocolError``."""
    _require(len(payload) <= MAX_BATCH_BYTES, f"batch of {len(payload)} bytes is too big")
    try:
        fields, records = _scan(payload.decode())
    except ProtocolError:
        raise
    except (ValueError, IndexError, RecursionError) as exc:
        raise ProtocolError(f"telemetry payload is not JSON: {exc}") from None
    _require(fields.get("schema") == SCHEMA_VERSION, "unsupported telemetry schema")
    device = fields.get("device")
    _require(
        isinstance(device, str) and DEVICE_ID_PATTERN.fullmatch(device) is not None,
        "bad batch device",
    )
    _require(fields.get("records") is records and records, "bad record list")
    out = []
    boot_ok, kinds, limit = BOOT_PATTERN.fullmatch, BODIES, 2**63
    for data, text in records:
        # one expression on the hot path; _identity_error explains a failure
        if not (
            type(data) is dict
            and data.get("dev") == device
            and type(boot := data.get("boot")) is str
            and boot_ok(boot)
            and type(seq := data.get("seq")) is int
            and 0 <= seq < limit
            and type(ts := data.get("ts_ms")) is int
            and 0 <= ts < limit
            and data.get("kind") in kinds
        ):
            raise ProtocolError(_identity_error(data, device))
        _require("\n" not in text and "\r" not in text, "record spans several lines")
        if full:
            Record.from_json(data)
        out.append(text.encode())
    return device, out
