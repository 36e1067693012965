"""The telemetry dataset: Hive-partitioned Parquet that the gateway's dataset sink and the cloud
receiver both write, and DuckDB, Spark or Trino read as they are.

Layout under a root (a directory, or any ``pyarrow.fs`` URI such as ``s3://bucket/prefix``)::

    stream=<telemetry|samples|summaries|other>/model=<name>/version=<n>/day=<YYYY-MM-DD>/<key>.parquet

``day`` is the UTC day of the record's ``ts_ms``. One batch becomes one file in each partition it
touches, named by the batch's idempotency key, so a batch sent again replaces its own files and
never adds rows. The partition keys are not repeated inside the files: readers take them from
the path (``hive_partitioning``). Columns are ``SCHEMA``; ``label`` is always null here, for a
labeller to fill in a copy later.

Every line is checked before anything is written (``parse_body``), so a batch with one bad line
writes nothing and the error names that line. A local file appears whole or not at all (temp
name, fsync, rename, fsync of the directory); on an object store a single PUT is already atomic.
pyarrow is imported only here and only by the processes that write or read the dataset.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from protocol.telemetry import (
    MAX_CLASSES,
    MAX_RECORD_BYTES,
    Inference,
    Record,
    Sample,
)
from protocol.topics import (
    DEVICE_ID_PATTERN,
    MAX_INT,
    NAME_PATTERN,
    ProtocolError,
    check_text,
    decode_json,
)

STREAMS = {
    "inference": "telemetry",
    "drift": "telemetry",
    "sample": "samples",
    "summary": "summaries",
    "label": "telemetry",
}
OTHER_STREAM = "other"
KEY_PATTERN = re.compile(r"[0-9a-f]{40}")
BOOT_PATTERN = re.compile(r"[0-9a-f]{8,64}")
MAX_VERSION = 2**31 - 1
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last day a date can name
MAX_FLOAT32 = 3.4028234663852886e38
STATS = ("mean", "p50", "p90", "p99")
CLASS_KEY = re.compile(r"0|[1-9][0-9]{0,3}")

SCHEMA = pa.schema(
    [
        ("dev", pa.string()),
        ("boot", pa.string()),
        ("seq", pa.int64()),
        ("ts_ms", pa.int64()),
        ("kind", pa.string()),
        ("class", pa.int32()),
        ("confidence", pa.float64()),
        ("margin", pa.float64()),
        ("latency_us", pa.int64()),
        ("campaign", pa.string()),
        ("trigger", pa.string()),
        ("scores", pa.list_(pa.float32())),
        ("input", pa.binary()),
        ("input_dtype", pa.string()),
        ("input_shape", pa.list_(pa.int32())),
        ("label", pa.int64()),
        ("site", pa.string()),  # the gateway that sent the batch (its X-Edgefleet-Site)
        ("record", pa.string()),
    ]
)
TYPED = ("class", "confidence", "margin", "latency_us", "campaign", "trigger", "scores")
TENSOR = ("input", "input_dtype", "input_shape")


class BadLine(ProtocolError):
    """A line of a batch that is not a record the dataset can store; ``line`` counts from 1."""

    def __init__(self, line: int, problem: str, reason: str = "invalid"):
        super().__init__(f"line {line}: {problem}", reason)
        self.line, self.problem = line, problem


@dataclass(frozen=True, order=True)
class Partition:
    stream: str
    model: str
    version: int
    day: str

    @property
    def path(self) -> str:
        return f"stream={self.stream}/model={self.model}/version={self.version}/day={self.day}"


Rows = dict[Partition, list[dict[str, Any]]]


def _require(condition: bool, message: str, reason: str = "invalid") -> None:
    if not condition:
        raise ProtocolError(message, reason)


def _int(data: dict[str, Any], key: str, low: int = 0, high: int = MAX_INT - 1) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{key!r} is not an integer", "type")
    _require(low <= value <= high, f"{key!r} is out of range {low}..{high}", "range")
    return value


def _number(value: Any, what: str, bound: float = MAX_FLOAT32) -> float:
    _require(
        isinstance(value, int | float) and not isinstance(value, bool), f"{what} is not a number"
    )
    _require(math.isfinite(value) and abs(value) <= bound, f"{what} is out of range", "range")
    return float(value)


def _text(data: dict[str, Any], key: str, limit: int = 256) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key!r} is not a string", "type")
    _require(0 < len(value) <= limit, f"{key!r} must be 1..{limit} characters", "size")
    return check_text(value, repr(key))


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{key!r} is not an object", "type")
    return value


def _inference(data: dict[str, Any], row: dict[str, Any]) -> None:
    body = Record.from_json(data).body
    assert isinstance(body, Inference)
    (best, score), *rest = body.top
    row |= {"class": best, "confidence": score, "latency_us": body.latency_us}
    if rest and math.isfinite(score - rest[0][1]):
        row["margin"] = score - rest[0][1]
    if body.raw is not None:
        row |= {"input": body.raw.data, "input_dtype": body.raw.dtype}
        row["input_shape"] = list(body.raw.shape)


def _sample(data: dict[str, Any], row: dict[str, Any]) -> None:
    body = Record.from_json(data).body
    assert isinstance(body, Sample)
    cls, confidence, margin = body.top
    row |= {
        "campaign": body.campaign,
        "trigger": body.trigger,
        "class": cls,
        "confidence": confidence,
        "margin": margin,
        "scores": list(body.scores),
        "input": body.input.data,
        "input_dtype": body.input.dtype,
        "input_shape": list(body.input.shape),
    }


def _stats(data: dict[str, Any], key: str) -> None:
    values = _object(data, key)
    for stat in STATS:
        if values.get(stat) is not None:  # null: no inference in the window
            _number(values.get(stat), f"{key}.{stat}", float(MAX_INT))


def _summary(data: dict[str, Any], row: dict[str, Any]) -> None:
    _text(data, "stream")
    _int(data, "start_ms", 0, MAX_TS_MS)
    _require(_number(data.get("window_s"), "'window_s'") > 0, "'window_s' must be > 0", "range")
    _int(data, "records")
    classes = _object(data, "classes")
    _require(len(classes) <= MAX_CLASSES, f"'classes' has more than {MAX_CLASSES} entries", "size")
    for name in classes:
        known = CLASS_KEY.fullmatch(name) is not None and int(name) < MAX_CLASSES
        _require(known, f"'classes' has a key {name[:20]!r} that is not a class")
        _int(classes, name)
    _stats(data, "confidence")
    _stats(data, "latency_us")
    drift = _object(data, "drift")
    _int(drift, "windows")
    _int(drift, "alarms")
    _number(drift.get("max_psi"), "drift.max_psi", float(MAX_INT))


def _drift(data: dict[str, Any], row: dict[str, Any]) -> None:
    Record.from_json(data)


def _label(data: dict[str, Any], row: dict[str, Any]) -> None:
    """Checked, and kept in ``record`` only: its class is the label of another row (its
    ``target``), which the labels view joins (``cloud.labels``)."""
    Record.from_json(data)


KINDS = {
    "inference": _inference,
    "drift": _drift,
    "sample": _sample,
    "summary": _summary,
    "label": _label,
}
BULKY = {"inference": "raw", "sample": "input"}  # stored in the tensor columns instead


def parse_record(raw: bytes) -> tuple[Partition, dict[str, Any]]:
    """One NDJSON line -> its partition and its row; ``ProtocolError`` for anything else."""
    _require(
        len(raw) <= MAX_RECORD_BYTES,
        f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}",
        "size",
    )
    data = decode_json(raw, "record")
    _require(isinstance(data, dict), "record is not a JSON object", "type")
    device, boot = data.get("dev"), data.get("boot")
    _require(
        isinstance(device, str) and DEVICE_ID_PATTERN.fullmatch(device) is not None, "bad 'dev'"
    )
    _require(isinstance(boot, str) and BOOT_PATTERN.fullmatch(boot) is not None, "bad 'boot'")
    kind, model = data.get("kind"), data.get("model")
    _require(isinstance(kind, str) and NAME_PATTERN.fullmatch(kind) is not None, "bad 'kind'")
    _require(isinstance(model, str) and NAME_PATTERN.fullmatch(model) is not None, "bad 'model'")
    version = _int(data, "version", 1, MAX_VERSION)
    ts_ms = _int(data, "ts_ms", 0, MAX_TS_MS)
    row: dict[str, Any] = dict.fromkeys(SCHEMA.names)
    row |= {"dev": device, "boot": boot, "seq": _int(data, "seq"), "ts_ms": ts_ms, "kind": kind}
    if kind in KINDS:
        KINDS[kind](data, row)
    bulky = BULKY.get(kind)
    if bulky in data:
        del data[bulky]
        row["record"] = json.dumps(data, separators=(",", ":"), allow_nan=False)
    else:
        row["record"] = raw.decode()
    day = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).date().isoformat()
    return Partition(STREAMS.get(kind, OTHER_STREAM), model, version, day), row


def parse_body(body: bytes, site: str | None = None) -> Rows:
    """A batch (NDJSON, one record per line) from the gateway of ``site`` -> rows by partition,
    or ``BadLine`` naming the first line that is not a record."""
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise BadLine(1, "the batch holds no record", "size")
    rows: Rows = {}
    for number, line in enumerate(lines, 1):
        try:
            partition, row = parse_record(line)
        except ProtocolError as exc:
            raise BadLine(number, str(exc), exc.reason) from None
        row["site"] = site
        rows.setdefault(partition, []).append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_batch(root: str | os.PathLike[str], key: str, rows: Rows) -> list[str]:
    """Write each partition's rows as ``<partition>/<key>.parquet``; the paths written."""
    if KEY_PATTERN.fullmatch(key) is None:
        raise ValueError(f"batch key {key[:60]!r} is not 40 hex characters")
    filesystem, base = _filesystem(root)
    written = []
    for partition, part in sorted(rows.items()):
        data = table(part)
        if filesystem is None:
            written.append(str(_write_local(Path(base) / partition.path, key, data)))
        else:
            directory = f"{base.rstrip('/')}/{partition.path}"
            filesystem.create_dir(directory, recursive=True)
            path = f"{directory}/{key}.parquet"
            with filesystem.open_output_stream(path) as out:
                pq.write_table(data, out, compression="zstd")
            written.append(path)
    return written


def _filesystem(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem | None, str]:
    """``(None, path)`` for a local directory, else the pyarrow filesystem of the URI."""
    text = os.fspath(root)
    if "://" not in text:
        return None, text
    filesystem, base = pafs.FileSystem.from_uri(text)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return None, base
    return filesystem, base


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """``mkdir -p`` whose new entries survive a power cut (each parent is synced)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)


def _write_local(directory: Path, key: str, data: pa.Table) -> Path:
    _make_dirs(directory)
    target = directory / f"{key}.parquet"
    temp = directory / f".{key}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(data, temp, compression="zstd")
        _fsync(temp, os.O_RDONLY)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)
    return target
