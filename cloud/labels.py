"""Labels beside the dataset: files of ``(id, label, labeller, labelled_at)`` imported into
``<dataset>/labels/<content hash>.parquet``, and the view every quality query reads them through.

An import checks every row before anything is written, so a file with one bad row changes
nothing and the error names the file, the row and the problem. The stored file is named by the
SHA-256 of its normalized rows, so importing the same labels again (from the same file, or the
same rows as CSV and as Parquet) finds the file already there and writes nothing. Labels are
never edited in place: a newer label of the same id wins (``labelled_at``, else the time of its
import; ties go to the later import).

A device (or an operator's app on it) may correct a prediction later with a record of kind
``label``: ``{"kind": "label", "target": "<dev:boot:seq>", "label": <class>, "labeller":
"device", ...}`` (``protocol.telemetry.Label``), sent as telemetry and forwarded by the
gateway like any record. Such records land in the telemetry stream and ``labels_sql`` reads
them beside the imported files, so they count the same way.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cloud.queries import source
from edgefleet.fsio import atomic_write_bytes, fsync_dir
from protocol.telemetry import MAX_CLASSES
from protocol.topics import MAX_INT, NAME_PATTERN

LABELS_DIR = "labels"
ID_PATTERN = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9a-f]{8,64}):(0|[1-9][0-9]{0,18})")
COLUMNS = ("id", "label", "labeller", "labelled_at")
ID_PARTS = ("dev", "boot", "seq")  # an export's columns, instead of ``id``
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.int64()),
        ("labeller", pa.string()),
        ("labelled_at", pa.timestamp("ms", tz="UTC")),
        ("imported_at", pa.timestamp("ms", tz="UTC")),
    ]
)
SHOWN_UNKNOWN = 10


class LabelError(ValueError):
    """A label file that cannot be imported; the message names the file, row and problem."""


@dataclass(frozen=True)
class Label:
    id: str
    label: int
    labeller: str | None
    labelled_at: dt.datetime | None


@dataclass
class Imported:
    """What an import did: the stored file (``None`` when nothing was labelled), whether it
    was new, the rows stored, rows without a label skipped, and ids not in the dataset."""

    path: Path | None
    written: bool
    rows: int
    skipped: int = 0
    unknown: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": None if self.path is None else str(self.path),
            "written": self.written,
            "rows": self.rows,
            "skipped_empty": self.skipped,
            "unknown_ids": len(self.unknown),
            "unknown_examples": self.unknown[:SHOWN_UNKNOWN],
            "ignored_columns": self.ignored_columns,
        }


def _raw_rows(path: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """The file's column names and its rows as dicts (CSV: strings; Parquet: typed)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            text = path.read_text(encoding="utf-8-sig")
            reader = csv.DictReader(io.StringIO(text, newline=""))
            return list(reader.fieldnames or []), iter(reader)
        if suffix == ".parquet":
            data = pq.read_table(path)
            return data.column_names, iter(data.to_pylist())
    except OSError as exc:
        raise LabelError(f"{path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        raise LabelError(f"{path}: not a readable {suffix[1:]} file ({exc})") from None
    raise LabelError(f"{path}: give a .csv or a .parquet file")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _id(row: dict[str, Any], by_parts: bool) -> str:
    if by_parts:
        if any(_blank(row.get(part)) for part in ID_PARTS):
            raise ValueError("dev, boot or seq is empty")
        value = f"{row['dev']}:{row['boot']}:{row['seq']}"
    else:
        value = row.get("id")
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value.strip()) is None:
        raise ValueError(f"id {str(value)[:80]!r} is not dev:boot:seq")
    value = value.strip()
    if int(value.rsplit(":", 1)[1]) >= MAX_INT:
        raise ValueError(f"id {value[:80]!r}: seq is out of range")
    return value


def _label(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,5}\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_CLASSES:
        raise ValueError(f"label {str(value)[:40]!r} is not a class index 0..{MAX_CLASSES - 1}")
    return value


def _labeller(value: Any, default: str | None) -> str | None:
    if _blank(value):
        return default
    if not isinstance(value, str) or NAME_PATTERN.fullmatch(value.strip()) is None:
        raise ValueError(f"labeller {str(value)[:80]!r}: 1..64 of letters, digits, '.', '_', '-'")
    return value.strip()


def _when(value: Any) -> dt.datetime | None:
    if _blank(value):
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"labelled_at {value[:40]!r} is not an ISO 8601 time") from None
    if not isinstance(value, dt.datetime):
        raise ValueError(f"labelled_at {str(value)[:40]!r} is not a time")
    if value.tzinfo is None:
        raise ValueError(f"labelled_at {value.isoformat()} has no time zone (add Z or +00:00)")
    return value.astimezone(dt.UTC)


def read_labels(path: Path, labeller: str | None = None) -> tuple[list[Label], int, list[str]]:
    """Every labelled row of ``path``, checked; rows without a label are skipped (an export
    with some labels filled in imports as it is). ``(labels, skipped, ignored columns)``."""
    columns, rows = _raw_rows(path)
    by_parts = "id" not in columns and all(part in columns for part in ID_PARTS)
    if "id" not in columns and not by_parts:
        raise LabelError(f"{path}: no 'id' column (or 'dev', 'boot' and 'seq'); it has {columns}")
    if "label" not in columns:
        raise LabelError(f"{path}: no 'label' column; it has {columns}")
    known = set(COLUMNS) | (set(ID_PARTS) if by_parts else set())
    ignored = [c for c in columns if c not in known]
    labels, skipped, seen = [], 0, {}
    for number, row in enumerate(rows, 1):
        try:
            if _blank(row.get("label")):
                skipped += 1
                continue
            label = Label(
                _id(row, by_parts),
                _label(row["label"]),
                _labeller(row.get("labeller"), labeller),
                _when(row.get("labelled_at")),
            )
        except ValueError as exc:
            raise LabelError(f"{path} row {number}: {exc}") from None
        if label.id in seen:
            raise LabelError(f"{path} row {number}: id {label.id} is labelled again (row "
                             f"{seen[label.id]}); one label per id in a file")  # fmt: skip
        seen[label.id] = number
        labels.append(label)
    return labels, skipped, ignored


def content_key(labels: list[Label]) -> str:
    """SHA-256 of the normalized rows in id order: the same labels give the same name."""
    digest = hashlib.sha256()
    for label in sorted(labels, key=lambda item: item.id):
        when = None if label.labelled_at is None else label.labelled_at.isoformat()
        row = [label.id, label.label, label.labeller, when]
        digest.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def _unknown(root: Path, ids: list[str]) -> list[str]:
    """The ids that name no sample or record in the dataset, in order."""
    connection = duckdb.connect()
    connection.register("wanted", pa.table({"id": ids}))
    present: set[str] = set()
    if any(root.glob("stream=*")):
        query = (
            f"SELECT DISTINCT w.id FROM wanted w JOIN (SELECT dev || ':' || boot || ':' || seq "
            f"AS id FROM {source(root)}) d USING (id)"
        )
        present = {row[0] for row in connection.sql(query).fetchall()}
    return [i for i in ids if i not in present]


def import_labels(root: Path, path: Path, labeller: str | None = None) -> Imported:
    """Check ``path`` whole, then store its labels as ``<root>/labels/<key>.parquet``."""
    labels, skipped, ignored = read_labels(path, labeller)
    if not labels:
        return Imported(None, False, 0, skipped, [], ignored)
    unknown = _unknown(root, [label.id for label in labels])
    directory = root / LABELS_DIR
    target = directory / f"{content_key(labels)}.parquet"
    if target.exists():
        return Imported(target, False, len(labels), skipped, unknown, ignored)
    now = dt.datetime.now(dt.UTC)
    table = pa.Table.from_pylist(
        [
            {"id": x.id, "label": x.label, "labeller": x.labeller, "labelled_at": x.labelled_at,
             "imported_at": now}
            for x in labels
        ],
        schema=SCHEMA,
    )  # fmt: skip
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    if not directory.is_dir():
        directory.mkdir(parents=True)
        fsync_dir(root)
    atomic_write_bytes(target, buffer.getvalue())
    return Imported(target, True, len(labels), skipped, unknown, ignored)


def labels_sql(root: Path) -> str:
    """A query of the newest label of each id: ``id, label, labeller, labelled_at``, from the
    imported files and from ``label`` records in the dataset (their ``ts_ms`` is their time)."""
    parts = []
    files = sorted((root / LABELS_DIR).glob("*.parquet"))
    if files:
        pattern = str(root / LABELS_DIR / "*.parquet").replace("'", "''")
        parts.append(
            "SELECT id, label, labeller, coalesce(labelled_at, imported_at) AS labelled_at, "
            f"imported_at FROM read_parquet('{pattern}')"
        )
    if any(root.glob("stream=*")):
        parts.append(
            "SELECT record ->> '$.target' AS id, TRY_CAST(record ->> '$.label' AS BIGINT) AS "
            "label, coalesce(record ->> '$.labeller', 'device') AS labeller, "
            "to_timestamp(ts_ms / 1000) AS labelled_at, to_timestamp(ts_ms / 1000) AS imported_at "
            f"FROM {source(root)} WHERE kind = 'label'"
        )
    if not parts:
        return (
            "SELECT NULL::VARCHAR AS id, NULL::BIGINT AS label, NULL::VARCHAR AS labeller, "
            "NULL::TIMESTAMPTZ AS labelled_at WHERE false"
        )
    union = " UNION ALL ".join(parts)
    return (
        f"SELECT id, label, labeller, labelled_at FROM ({union}) WHERE id IS NOT NULL AND "
        f"label BETWEEN 0 AND {MAX_CLASSES - 1} QUALIFY row_number() OVER (PARTITION BY id "
        "ORDER BY labelled_at DESC, imported_at DESC, label) = 1"
    )
