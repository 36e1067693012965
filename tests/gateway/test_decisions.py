"""The gateway's pure parts: batch splitting, message classification, inventory reducers,
upload timing and backoff, configuration checks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.backoff import backoff_delay
from edgefleet.errors import UserError
from gateway import config
from gateway.devices.inventory import apply_event, apply_status, touch
from gateway.telemetry.ingest import Malformed, Telemetry, classify, subscriptions
from gateway.telemetry.records import split_batch, split_records
from gateway.telemetry.spool import batch_due
from gateway.telemetry.uplink import retry_delay
from protocol.telemetry import decode_batch, encode_batch
from protocol.topics import DriftInfo, Event, ModelInfo, ProtocolError, SpoolInfo, Status
from tests.gateway.support import EDGEFLEET, make_record

PREFIX = "edgefleet/site1"
BOOT = "0123456789abcdef"


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=30, unique=True), st.booleans())
def test_split_gives_each_records_original_bytes(seqs, full):
    records = [make_record("dev-1", BOOT, s) for s in seqs]
    payload = encode_batch("dev-1", records)
    device, split = split_batch(payload, full)
    assert device == "dev-1"
    assert split == records
    assert [r.id.seq for r in decode_batch(payload).records] == seqs


def test_split_keeps_bytes_of_records_with_spacing_and_any_key_order():
    record = b'{ "dev" : "d", "boot":"0123456789abcdef","seq":1,"ts_ms":2,"kind":"inference" }'
    payload = b' {"records" : [ ' + record + b' ] , "device":"d", "schema":1 } '
    assert split_batch(payload) == ("d", [record])


# JSON values for a record's other fields, and number spellings json and msgspec might read
# differently.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12, alphabet=st.sampled_from('ab"\\},{[]:\u00e9\ud800\U0001f600 \t\n')),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
NUMBER_SPELLINGS = [b"1e400", b"-1e400", b"1E+2", b"-0", b"0.1e-400", b"5e-324", b"-0.0", b"1" * 30]
NOT_JSON = [b"01", b"1.", b".5", b"+1", b"1e", b'"\\x"', b"tru", b"[1 2]", b'{"a" 1}', b"NaN"]
IDENTITY = {"dev": "d", "boot": "0123456789abcdef", "seq": 1, "ts_ms": 2, "kind": "inference"}


@st.composite
def record_bytes(draw) -> bytes:
    """A compact record, now and then with a field that breaks the identity check, a repeated
    key, or a number spelled oddly."""
    data = dict(IDENTITY) | {"x": draw(JSON_VALUES)}
    if draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from(sorted(IDENTITY)))
        data[key] = draw(st.sampled_from([None, True, -1, 2**63, "e", "inference", "zz", 1.5]))
    raw = json.dumps(data, separators=(",", ":")).encode()
    if draw(st.integers(0, 3)) == 0:
        odd = NUMBER_SPELLINGS + NOT_JSON
        field = draw(st.sampled_from([b'"n":' + n for n in odd] + [b'"dev":"e"']))
        raw = raw[:-1] + b"," + field + b"}"
    return raw


def outcome(split, payload: bytes, full: bool):
    try:
        return split(payload, full)
    except ProtocolError as exc:
        return exc.reason


# What may follow the records in a batch's object: nothing, another key, a repeated one.
ENVELOPE_TAILS = [b"", b',"x":1', b',"device":"e"', b',"records":[{}]', b',"schema":2']


@given(
    st.lists(record_bytes(), min_size=1, max_size=5), st.sampled_from(ENVELOPE_TAILS), st.booleans()
)
def test_compact_and_spaced_batches_split_alike(records, tail, full):
    """The batch as agents write it (the fast paths) and the same records with spacing between
    them (the scanner) are accepted or refused alike, with the same records, whether the
    records are decoded (split_records) or not (split_batch)."""
    compact = encode_batch("d", records)[:-1] + tail + b"}"
    spaced = (
        b'{"schema": 1, "device": "d", "records": [ ' + b" , ".join(records) + b" ]" + tail + b"}"
    )
    found = outcome(split_records, compact, full)
    assert found == outcome(split_records, spaced, full)
    if isinstance(found, str):
        assert outcome(split_batch, compact, full) == outcome(split_batch, spaced, full) == found
    else:
        assert found == ("d", [(json.loads(raw), raw) for raw in records])
        assert (
            outcome(split_batch, compact, full)
            == outcome(split_batch, spaced, full)
            == (
                "d",
                records,
            )
        )


@pytest.mark.parametrize("depth", [100, 300, 5000])
def test_deeply_nested_records_are_judged_alike_compact_or_spaced(depth):
    record = json.dumps(IDENTITY).replace(" ", "").encode()[:-1]
    record += b',"x":' + b"[" * depth + b"]" * depth + b"}"
    compact = encode_batch("d", [record])
    spaced = b'{"schema": 1, "device": "d", "records": [ ' + record + b" ] }"
    for split in (split_batch, split_records):
        assert outcome(split, compact, False) == outcome(split, spaced, False)
    assert outcome(split_batch, compact, False) == (("d", [record]) if depth < 1000 else "nesting")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'{"schema":1,"device":"d","records":[]}',
        b'{"schema":2,"device":"d","records":[{}]}',
        b'{"schema":1,"device":"d/x","records":[{}]}',
        b'{"schema":1,"device":"d","records":[1]}',
        b'{"schema":1,"device":"d","device":"e","records":[{}]}',
        b'{"schema":1,"device":"d","records":[{"dev":"e","boot":"0123456789abcdef",'
        b'"seq":1,"ts_ms":1,"kind":"inference"}]}',
        b'{"schema":1,"device":"d","records":[{"dev":"d","boot":"xyz",'
        b'"seq":1,"ts_ms":1,"kind":"inference"}]}',
        b'{"schema":1,"device":"d","records":[{"dev":"d","boot":"0123456789abcdef",'
        b'"seq":true,"ts_ms":1,"kind":"inference"}]}',
        b'{"schema":1,"device":"d","records":[{"dev":"d","boot":"0123456789abcdef",'
        b'"seq":1,"ts_ms":NaN,"kind":"inference"}]}',
        b'{"schema":1,"device":"d","records":[{"dev":"d","boot":"0123456789abcdef",'
        b'"seq":1,"ts_ms":1,"kind":"nope"}]}',
        b'{"schema":1,"device":"d","records":[{"dev":"d","boot":"0123456789abcdef",\n'
        b'"seq":1,"ts_ms":1,"kind":"inference"}]}',
        b'{"schema":1,"device":"d","records":[{"dev":"d","boot":"0123456789abcdef",'
        b'"seq":1,"ts_ms":1,"kind":"inference"}]} trailing',
        b'{"schema":1,"device":"d","records":[{"dev":"d"',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_split_refuses_malformed_batches_with_protocol_error(payload):
    with pytest.raises(ProtocolError):
        split_batch(payload)


def test_full_validation_refuses_a_bad_body_that_identity_lets_through():
    record = b'{"dev":"d","boot":"0123456789abcdef","seq":1,"ts_ms":2,"kind":"inference"}'
    payload = encode_batch("d", [record])
    assert split_batch(payload, full=False) == ("d", [record])
    with pytest.raises(ProtocolError):
        split_batch(payload, full=True)


def test_classify_binds_payload_to_the_topic_device():
    payload = encode_batch("dev-1", [make_record("dev-1", BOOT, 0)])
    assert isinstance(classify(f"{PREFIX}/dev/dev-1/telemetry", payload, PREFIX, False), Telemetry)
    spoofed = classify(f"{PREFIX}/dev/dev-2/telemetry", payload, PREFIX, False)
    assert isinstance(spoofed, Malformed) and "dev-1" in spoofed.detail
    assert spoofed.reason == "device_mismatch"
    assert isinstance(classify("other/dev/dev-1/telemetry", payload, PREFIX, False), Malformed)
    assert isinstance(classify(f"{PREFIX}/dev/dev-1/cmd", payload, PREFIX, False), Malformed)
    assert isinstance(classify(f"{PREFIX}/dev/dev-1/status", b"{", PREFIX, False), Malformed)
    assert classify(f"{PREFIX}/dev/dev-1/status", b"", PREFIX, False) is None


def test_shared_group_applies_to_telemetry_and_samples_only():
    base = config.MqttConfig("h", 1, False, "c", PREFIX)
    assert subscriptions(base)[:2] == [f"{PREFIX}/dev/+/telemetry", f"{PREFIX}/dev/+/samples"]
    shared = config.MqttConfig("h", 1, False, "c", PREFIX, share_group="g")
    assert subscriptions(shared) == [
        f"$share/g/{PREFIX}/dev/+/telemetry",
        f"$share/g/{PREFIX}/dev/+/samples",
        f"{PREFIX}/dev/+/status",
        f"{PREFIX}/dev/+/events",
    ]


def test_inventory_reducers():
    status = Status(
        device="d",
        state="online",
        ts_ms=5,
        agent_version="1.2.3",
        model=ModelInfo("kws", 3, "0" * 64),
        health="ok",
        update_state="TRIAL",
        drift=DriftInfo(100, 0.4, True, True),
        spool=SpoolInfo(7, 700, 10_000, 2, 99),
    )
    row = apply_status(None, status, now=10.0)
    assert (row.state, row.model, row.model_version, row.update_state) == (
        "online",
        "kws",
        3,
        "TRIAL",
    )
    assert (row.drift_alarm, row.spool_depth, row.spool_dropped, row.first_seen) == (True, 7, 2, 10)
    row = touch(row, "d", 25, now=11.0)
    row = apply_event(row, Event("d", 6, "drift_alarm"), now=12.0)
    row = apply_event(row, Event("d", 7, "update_committed"), now=13.0)
    assert (row.records, row.drift_alarms, row.update_state, row.last_event) == (
        25,
        1,
        "COMMITTED",
        "update_committed",
    )
    row = apply_event(row, Event("d", 8, "drift_cleared"), now=14.0)
    offline = apply_status(row, Status.offline("d"), now=15.0)
    assert (offline.state, offline.model_version, offline.drift_alarm) == ("offline", 3, False)
    assert (offline.first_seen, offline.last_seen) == (10.0, 15.0)


def test_batch_due_by_records_bytes_and_age():
    assert not batch_due(0, 0, None, 10, 100, 1.0)
    assert batch_due(10, 1, 0.0, 10, 100, 1.0)
    assert batch_due(1, 100, 0.0, 10, 100, 1.0)
    assert not batch_due(1, 1, 0.5, 10, 100, 1.0)
    assert batch_due(1, 1, 1.0, 10, 100, 1.0)


def test_backoff_is_full_jitter_under_a_cap_and_honours_retry_after():
    assert backoff_delay(0, 0.5, 60, lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 60, lambda: 1.0) == 4.0
    assert backoff_delay(100, 0.5, 60, lambda: 1.0) == 60
    assert backoff_delay(5, 0.5, 60, lambda: 0.0) == 0.0
    assert retry_delay(0, 0.5, 60, 10.0, lambda: 0.0) == 10.0
    assert retry_delay(0, 0.5, 60, 3600.0, lambda: 0.0) == 60


def _config(tmp_path: Path, text: str):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return config.load(path)


GOOD = '[gateway]\nsite = "s1"\ndata_dir = "data"\n'


def test_config_defaults_and_relative_paths(tmp_path: Path):
    loaded = _config(tmp_path, GOOD)
    assert loaded.data_dir == tmp_path / "data"
    assert loaded.mqtt.prefix == "edgefleet/s1"
    assert loaded.uplink.sink == "dir"
    assert loaded.admin.listen.path == tmp_path / "data" / "admin.sock"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[uplink]\nsink = "http"\n', "uplink.url"),
        ('[uplink]\nsink = "http"\nurl = "http://example.com/x"\n', "uplink.url"),
        ('[uplink]\nsink = "ftp"\n', "uplink.sink"),
        ("[uplink]\nconcurrency = 0\n", "uplink.concurrency"),
        ('[mqtt]\nurl = "tcp://x"\n', "mqtt.url"),
        ('[mqtt]\nshare_group = "a/b"\n', "mqtt.share_group"),
        ('[mqtt]\nprotocol = "3.1.1"\nshare_group = "ingest"\n', "mqtt.share_group"),
        ('[mqtt]\nprotocol = "4"\n', "mqtt.protocol"),
        ("[spool]\nmax_bytes = 10\n", "spool.max_bytes"),
        ('[mqtt]\nprotocol = "3.1.1"\nmax_packet_size = 300000\n', "mqtt.max_packet_size"),
        ("[mqtt]\nmax_packet_size = 1024\n", "mqtt.max_packet_size"),
        ("[dead_letters]\nmax_bytes = 2097152\n", "dead_letters.max_bytes"),
        ('[admin]\nlisten = "0.0.0.0:80"\n', "admin.listen"),
        ("[spool]\ncolour = 1\n", "spool.colour"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, extra: str, key: str):
    with pytest.raises(UserError, match=f"key {key}:"):
        _config(tmp_path, GOOD + extra)


def test_bad_config_is_one_line_and_exit_code_2(tmp_path: Path):
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD + '[uplink]\nsink = "http"\nurl = "ftp://x"\n')
    result = subprocess.run(
        [str(EDGEFLEET), "gateway", "run", "--config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "key uplink.url" in result.stderr
