"""The dataset layout: records of every kind become typed rows in Hive partitions that DuckDB
reads back; a batch sent again replaces its files; hostile lines are refused by line number,
and a compressed input never inflates past what its shape holds."""

from __future__ import annotations

import base64
import json
import zlib

import duckdb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import dataset
from protocol.telemetry import MAX_RAW_BYTES
from protocol.topics import ProtocolError
from tests.cloud.records import body, drift, inference, line, sample, summary

KEY = "a" * 40


def query(root, sql: str) -> list[tuple]:
    source = f"read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    return duckdb.sql(sql.format(source=source)).fetchall()


def test_every_kind_lands_in_its_partition_with_typed_columns(tmp_path):
    other = {**inference(9), "kind": "heartbeat", "v": 1}
    rows = dataset.parse_body(body(sample(1), inference(2), drift(3), summary(4), other))
    written = dataset.write_batch(tmp_path, KEY, rows)
    assert len(written) == 4 and all(p.endswith(f"/{KEY}.parquet") for p in written)
    got = query(
        tmp_path,
        "SELECT stream, model, version, day, kind, class, confidence, margin, latency_us, "
        "campaign, scores, input_dtype, input_shape, label FROM {source} ORDER BY seq",
    )
    day = got[0][3]
    assert day.isoformat() == "2023-11-14"
    assert got == [
        ("samples", "kws", 2, day, "sample", 1, 0.5, 0.125, None, "low-conf",
         [0.0625, 0.5, 0.375, 0.0625], "float32", [3, 4], None),
        ("telemetry", "kws", 2, day, "inference", 2, 0.75, 0.625, 802, None, None, None, None,
         None),
        ("telemetry", "kws", 2, day, "drift", None, None, None, None, None, None, None, None,
         None),
        ("summaries", "kws", 2, day, "summary", None, None, None, None, None, None, None, None,
         None),
        ("other", "kws", 2, day, "heartbeat", None, None, None, None, None, None, None, None,
         None),
    ]  # fmt: skip
    types = dict(
        query(tmp_path, "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {source})")
    )
    assert types["label"] == "BIGINT" and types["class"] == "INTEGER"
    assert types["scores"] == "FLOAT[]" and types["input"] == "BLOB"


def test_the_input_is_the_tensor_bytes_and_the_record_keeps_the_rest(tmp_path):
    array = np.arange(-6, 6, dtype=np.int16).reshape(2, 6)
    record = sample(7, array)
    dataset.write_batch(tmp_path, KEY, dataset.parse_body(body(record)))
    [(raw, kept)] = query(tmp_path, "SELECT input, record FROM {source}")
    assert np.array_equal(np.frombuffer(raw, "<i2").reshape(2, 6), array)
    assert json.loads(kept) == {k: v for k, v in record.items() if k != "input"}
    plain = inference(8)
    dataset.write_batch(tmp_path, "b" * 40, dataset.parse_body(body(plain)))
    [(text,)] = query(tmp_path, "SELECT record FROM {source} WHERE kind = 'inference'")
    assert text.encode() == line(plain)  # the original bytes, untouched


def test_a_batch_sent_again_replaces_its_own_files(tmp_path):
    batch = dataset.parse_body(body(*(sample(i) for i in range(5)), inference(9)))
    first = dataset.write_batch(tmp_path, KEY, batch)
    again = dataset.write_batch(tmp_path, KEY, batch)
    assert first == again
    assert query(tmp_path, "SELECT count(*) FROM {source}") == [(6,)]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_one_bad_line_names_its_number_and_nothing_is_parsed_past_it():
    bad = body(sample(1), inference(2), {**drift(3), "version": 0})
    with pytest.raises(dataset.BadLine, match=r"^line 3: 'version' is out of range") as caught:
        dataset.parse_body(bad)
    assert caught.value.line == 3


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"shape": [3, 5]}, "input size does not match its shape"),
        ({"shape": [2, 4]}, "input size does not match its shape"),
        ({"dtype": "float64"}, "unknown input dtype"),
        ({"shape": [1024, 1024]}, "too big"),
        ({"zlib": "!!"}, "not base64"),
        ({"zlib": base64.b64encode(b"not zlib").decode()}, "not base64 zlib data"),
    ],
)
def test_a_sample_input_that_does_not_match_its_shape_is_refused(change, problem):
    record = sample(1)
    record["input"] |= change
    with pytest.raises(ProtocolError, match=problem):
        dataset.parse_record(line(record))


def test_a_compressed_bomb_is_stopped_at_the_shape_not_inflated():
    record = sample(1)
    bomb = zlib.compress(bytes(100 * 1024 * 1024), 9)  # 100 MiB of zeros in ~100 KiB
    record["input"]["zlib"] = base64.b64encode(bomb).decode()
    with pytest.raises(ProtocolError, match="does not match its shape"):
        dataset.parse_record(line(record))


def test_the_largest_input_the_contract_allows_is_taken():
    array = np.zeros(MAX_RAW_BYTES // 4, np.float32)
    _, row = dataset.parse_record(line(sample(1, array)))
    assert len(row["input"]) == MAX_RAW_BYTES and row["input_shape"] == [MAX_RAW_BYTES // 4]


def test_the_key_names_the_file_and_must_be_hex(tmp_path):
    rows = dataset.parse_body(body(sample(1)))
    with pytest.raises(ValueError, match="40 hex"):
        dataset.write_batch(tmp_path, "../../etc/passwd", rows)


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
BASES = st.sampled_from([sample(1), inference(2), drift(3), summary(4)])


def _parse_or_refuse(raw: bytes) -> None:
    try:
        partition, row = dataset.parse_record(raw)
    except ProtocolError:
        return
    dataset.table([row])  # what was accepted always fits the schema
    assert partition.stream in ("telemetry", "samples", "summaries", "other")


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_a_row_or_a_protocol_error(raw):
    _parse_or_refuse(raw)


@given(BASES, st.data())
def test_a_record_with_any_field_replaced_is_a_row_or_a_protocol_error(base, data):
    record = json.loads(json.dumps(base))
    key = data.draw(st.sampled_from(sorted(record)))
    record[key] = data.draw(VALUES)
    _parse_or_refuse(json.dumps(record).encode())


@given(st.data())
def test_a_sample_input_with_any_field_replaced_is_a_row_or_a_protocol_error(data):
    record = sample(1)
    key = data.draw(st.sampled_from(["dtype", "shape", "zlib"]))
    record["input"][key] = data.draw(VALUES)
    _parse_or_refuse(json.dumps(record).encode())


@given(st.lists(st.sampled_from([b"", b"{}", b"[", line(sample(1)), b"\xff"]), max_size=6))
def test_a_body_of_any_lines_is_rows_or_bad_line(lines):
    try:
        rows = dataset.parse_body(b"\n".join(lines))
    except dataset.BadLine as exc:
        assert 1 <= exc.line <= max(1, len(lines))
        return
    assert sum(map(len, rows.values())) == len([x for x in lines if x]) >= 1
