"""Property tests: whatever a device sends, the ingest's decoding, validation and storing end in
a stored message or a dead letter, never in an exception.

Valid telemetry batches (an inference and a drift record), statuses and events are taken apart
field by field, every field (nested ones and list items too) is replaced by a hostile value, and
whole payloads are broken (invalid UTF-8, oversize, deep nesting); the result goes through the
real ``Ingest._persist_sync`` on a real SQLite database, in both validation modes.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import IngestConfig, MqttConfig
from gateway.devices.inventory import Inventory
from gateway.store import open_database
from gateway.telemetry.dead_letters import DeadLetters
from gateway.telemetry.ingest import Inbound, Ingest, Malformed, classify
from gateway.telemetry.records import split_batch
from gateway.telemetry.spool import UplinkSpool
from protocol.telemetry import (
    MAX_BATCH_BYTES,
    DriftWindow,
    Inference,
    InputSummary,
    RawInput,
    Record,
    RecordId,
    encode_batch,
)
from protocol.topics import (
    REASONS,
    DriftInfo,
    Event,
    ModelInfo,
    ProtocolError,
    SpoolInfo,
    Status,
    device_topic,
)
from tests.gateway.support import PREFIX

DEVICE = "cam-1"
BOOT = "00ff00ff00ff00ff"

INFERENCE = Record(
    RecordId(DEVICE, BOOT, 5),
    1_700_000_000_000,
    Inference(
        "kws",
        1,
        ((1, 0.5), (2, 0.25)),
        10,
        InputSummary(0.0, 1.0, -1.0, 1.0, (0.5, 0.25)),
        RawInput("int8", (2,), b"\x01\x02"),
    ),
).encode()
DRIFT = Record(
    RecordId(DEVICE, BOOT, 6),
    1_700_000_000_001,
    DriftWindow("kws", 1, 50, True, False, 0.1, (0.1,), (0.05,), 0.02, ((1, 2),), ((3,),), (4,)),
).encode()
VALID = {
    "telemetry": encode_batch(DEVICE, [INFERENCE, DRIFT]),
    "status": Status(
        DEVICE,
        "online",
        1,
        agent_version="0.1.0",
        boot=BOOT,
        model=ModelInfo("kws", 2, "a" * 64),
        health="ok",
        slots={"a": "kws-2"},
        drift=DriftInfo(50, 0.05, False, True),
        spool=SpoolInfo(3, 900, 10_000, 4, 40),
        counters={"restarts": 1},
        hardware_tags=("pi4",),
        arena_bytes=1024,
    ).encode(),
    "events": Event(DEVICE, 2, "drift_alarm", {"psi": 0.4, "rollout": "r1"}).encode(),
}

# Tokens json.dumps cannot write, spliced in as raw text.
RAW = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e400": "1e400",
    "surrogate": '"\\ud800"',
    "deep_list": "[" * 3000 + "]" * 3000,
    "deep_object": '{"a":' * 3000 + "1" + "}" * 3000,
}
hostile_values = st.one_of(
    st.sampled_from([[], {}, "", "x" * 2000, True, False, None, 1.5, -1, 0, [1, 2], {"a": 1}]),
    st.integers(19, 400).flatmap(lambda n: st.sampled_from([10**n, -(10**n), 2**63, -(2**63)])),
    st.sampled_from([f"@RAW:{name}@" for name in RAW]),
)


def paths(value, prefix=()) -> Iterator[tuple]:
    """Every field and list item of a JSON value, as a path of keys and indexes."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield (*prefix, key)
        yield from paths(item, (*prefix, key))


def replaced(data, path: tuple, value):
    copy = json.loads(json.dumps(data))
    holder = copy
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return copy


def dumps(data) -> bytes:
    text = json.dumps(data, separators=(",", ":"))
    return re.sub(r'"@RAW:([^@]+)@"', lambda m: RAW[m.group(1)], text).encode()


@st.composite
def hostile(draw, kind: str) -> bytes:
    valid = VALID[kind]
    data = json.loads(valid)
    every = list(paths(data))
    how = draw(st.sampled_from(["field", "utf8", "oversize", "truncate", "nest"]))
    if how == "field":
        return dumps(replaced(data, draw(st.sampled_from(every)), draw(hostile_values)))
    if how == "utf8":
        at = draw(st.integers(0, len(valid) - 1))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))
        return valid[:at] + bad + valid[at + 1 :]
    if how == "oversize":
        return valid[:-1] + b',"pad":"' + b"x" * MAX_BATCH_BYTES + b'"}'
    if how == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    return b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def conn(tmp_path_factory) -> Iterator[sqlite3.Connection]:
    conn = open_database(Path(tmp_path_factory.mktemp("hostile")) / "gateway.db")
    yield conn
    conn.close()


def ingest_for(conn: sqlite3.Connection, validation: str) -> Ingest:
    """The ingest's real store path on ``conn``, without a broker connection."""
    spool = UplinkSpool(None, max_bytes=64 * 1024 * 1024)
    spool._load_sync(conn)
    dead = DeadLetters(max_entries=1000, max_bytes=16 * 1024 * 1024).load_sync(conn)
    mqtt = MqttConfig("127.0.0.1", 1883, False, "gw", PREFIX)
    return Ingest(
        mqtt, IngestConfig(validation), None, spool, dead, Inventory(None), None, None, None
    )


def letters(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]


kinds = st.sampled_from(["telemetry", "status", "events"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(kinds, st.data()), min_size=1, max_size=4), st.booleans())
def test_any_payload_is_stored_or_dead_lettered_never_raised(conn, items, full):
    ingest = ingest_for(conn, "full" if full else "identity")
    group = []
    for mid, (kind, data) in enumerate(items, 1):
        payload = data.draw(st.one_of(st.just(VALID[kind]), hostile(kind)))
        group.append(Inbound(0, mid, 1, device_topic(PREFIX, DEVICE, kind), payload))
    before = letters(conn)
    result = ingest._persist_sync(conn, group)  # must not raise
    cleared = sum(1 for item in group if item.topic.endswith("/status") and not item.payload)
    assert sum(result.kinds.values()) == len(group) - cleared  # a cleared status is ignored
    assert len(result.malformed) == result.kinds.get("malformed", 0)
    assert letters(conn) == before + len(result.malformed)
    for _, why in result.malformed:
        assert why.reason in (*REASONS, "device_mismatch"), why
        assert why.detail


@settings(max_examples=300)
@given(st.data())
def test_parsers_refuse_hostile_payloads_with_protocol_error_and_a_reason(data):
    kind = data.draw(kinds)
    payload = data.draw(hostile(kind))
    decode = {
        "telemetry": lambda p: split_batch(p, data.draw(st.booleans())),
        "status": Status.decode,
        "events": Event.decode,
    }[kind]
    try:
        decode(payload)
    except ProtocolError as exc:
        assert exc.reason in REASONS and str(exc)


@pytest.mark.parametrize(
    ("kind", "path", "value", "reason"),
    [
        ("telemetry", ("records", 0, "kind"), [], "type"),
        ("telemetry", ("records", 0, "kind"), {}, "type"),
        ("telemetry", ("records", 0, "seq"), 10**400, "range"),
        ("status", ("drift", "max_psi"), 10**400, "range"),
        ("status", ("ts_ms"), 2**63, "range"),
        ("status", ("counters", "restarts"), 10**30, "range"),
        ("status", ("agent_version",), "@RAW:surrogate@", "encoding"),
        ("status", ("drift", "max_psi"), "@RAW:1e400@", "non_finite"),
        ("status", ("drift", "max_psi"), "@RAW:NaN@", "non_finite"),
        ("status", ("slots",), "@RAW:deep_list@", "nesting"),
        ("events", ("detail", "psi"), "@RAW:-Infinity@", "non_finite"),
        ("events", ("ts_ms",), "x", "type"),
    ],
)
def test_known_poison_is_refused_with_its_reason(kind, path, value, reason):
    path = path if isinstance(path, tuple) else (path,)
    payload = dumps(replaced(json.loads(VALID[kind]), path, value))
    found = classify(device_topic(PREFIX, DEVICE, kind), payload, PREFIX, False)
    assert isinstance(found, Malformed) and found.reason == reason, found


# Every numeric field of a record that "full" validation converts to a float.
FULL_NUMBERS = [
    ("records", 0, "in", "mean"),
    ("records", 0, "in", "std"),
    ("records", 0, "in", "min"),
    ("records", 0, "in", "max"),
    ("records", 0, "in", "feat", 0),
    ("records", 0, "top", 0, 1),
    ("records", 1, "max_psi"),
    ("records", 1, "psi_in", 0),
    ("records", 1, "psi_out", 0),
    ("records", 1, "psi_top1"),
]


@pytest.mark.parametrize("path", FULL_NUMBERS)
def test_full_validation_refuses_huge_integers_in_every_number(path):
    payload = dumps(replaced(json.loads(VALID["telemetry"]), path, 10**400))
    with pytest.raises(ProtocolError) as refused:
        split_batch(payload, full=True)
    assert refused.value.reason == "range"


def test_invalid_utf8_and_oversize_are_named():
    with pytest.raises(ProtocolError, match="not UTF-8") as refused:
        split_batch(b'{"schema":1,"device":"\xff"}')
    assert refused.value.reason == "encoding"
    with pytest.raises(ProtocolError) as refused:
        Status.decode(b" " * (64 * 1024))
    assert refused.value.reason == "size"


def test_a_message_that_cannot_be_stored_is_rolled_back_alone(conn, monkeypatch):
    """The store step fails for one message (injected: nothing a device can send makes SQLite
    refuse a validated row): the others of its group are stored, it is a dead letter."""
    ingest = ingest_for(conn, "identity")
    save = Inventory.save_sync

    def failing(conn, changed):
        changed = list(changed)
        if any(d.state == "online" for d in changed):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        save(conn, changed)

    monkeypatch.setattr(Inventory, "save_sync", staticmethod(failing))
    records_before = ingest.spool.stats.records
    group = [
        Inbound(0, 1, 1, device_topic(PREFIX, DEVICE, "telemetry"), VALID["telemetry"]),
        Inbound(0, 2, 1, device_topic(PREFIX, DEVICE, "status"), VALID["status"]),
        Inbound(0, 3, 1, device_topic(PREFIX, DEVICE, "telemetry"), VALID["telemetry"]),
    ]
    result = ingest._persist_sync(conn, group)
    assert result.records == 4 and ingest.spool.stats.records == records_before + 4
    [(_, why)] = result.malformed
    assert (why.kind, why.reason) == ("status", "store") and "OverflowError" in why.detail
    stored = conn.execute("SELECT total(n) FROM records").fetchone()[0]
    assert stored == ingest.spool.stats.records


def test_a_group_leaves_each_devices_last_state_on_disk(conn):
    """Telemetry, a status and more telemetry of one device in one group, a bad batch between
    them: the device's row on disk counts the valid records and holds the status."""
    ingest = ingest_for(conn, "identity")
    topic = device_topic(PREFIX, DEVICE, "telemetry")
    before = ingest.inventory.devices.get(DEVICE)
    counted = before.records if before else 0
    group = [
        Inbound(0, 1, 1, topic, VALID["telemetry"]),
        Inbound(0, 2, 1, device_topic(PREFIX, DEVICE, "status"), VALID["status"]),
        Inbound(0, 3, 1, topic, b'{"schema":1}'),
        Inbound(0, 4, 1, topic, VALID["telemetry"]),
    ]
    result = ingest._persist_sync(conn, group)
    ingest.inventory.replace(result.changed.values())
    (data,) = conn.execute("SELECT data FROM devices WHERE device = ?", (DEVICE,)).fetchone()
    on_disk = json.loads(data)
    assert on_disk["records"] == counted + 4 and on_disk["state"] == "online"
    assert on_disk == json.loads(json.dumps(ingest.inventory.devices[DEVICE].to_json()))
