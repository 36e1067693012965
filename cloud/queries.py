"""Questions over a dataset directory, answered by DuckDB in process over
``read_parquet('<root>/**/*.parquet', hive_partitioning=true)``: its partitions, the rows of
one stream, and exports for training (NPZ or one Parquet file, each with a manifest).

A record may sit in two files when the gateway sent it in two different batches (after a
restart its batches can be cut differently); exports keep one row per record id
(``dev``, ``boot``, ``seq``). Partition columns are typed explicitly, so a model named ``7``
stays a string.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from edgefleet.fsio import atomic_write_bytes, fsync_dir

HIVE_TYPES = "{'stream': 'VARCHAR', 'model': 'VARCHAR', 'version': 'BIGINT', 'day': 'DATE'}"
DTYPES = {"float32": "<f4", "int8": "i1", "uint8": "u1", "int16": "<i2", "int32": "<i4"}
FORMATS = ("npz", "parquet")


class ExportError(ValueError):
    """The rows asked for cannot be exported in that form; the message says why and what to do."""


@dataclass(frozen=True)
class Filters:
    stream: str
    model: str | None = None
    version: int | None = None
    campaign: str | None = None
    labelled: bool = False  # only rows with a label

    def where(self) -> tuple[str, list[Any]]:
        clauses, values = ["stream = ?"], [self.stream]
        for column in ("model", "version", "campaign"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if self.labelled:
            clauses.append("label IS NOT NULL")
        return " AND ".join(clauses), values


def files(root: Path) -> list[Path]:
    return sorted(root.glob("stream=*/model=*/version=*/day=*/*.parquet"))


def source(root: Path) -> str:
    """The dataset's files only: labels and other files beside the streams are not rows."""
    pattern = str(root / "stream=*" / "model=*" / "version=*" / "day=*" / "*.parquet")
    pattern = pattern.replace("'", "''")
    return (
        f"read_parquet('{pattern}', hive_partitioning=true, hive_types={HIVE_TYPES}, "
        "union_by_name=true)"  # files written before a column was added read it as null
    )


def partitions(root: Path) -> list[dict[str, Any]]:
    """Each partition with its rows (as stored: a record sent twice counts twice) and bytes."""
    found = files(root)
    if not found:
        return []
    sizes: Counter[str] = Counter()
    for path in found:
        sizes[str(path.parent.relative_to(root))] += path.stat().st_size
    query = (
        f"SELECT stream, model, version, day, count(*) FROM {source(root)} "
        "GROUP BY ALL ORDER BY ALL"
    )
    out = []
    for stream, model, version, day, count in duckdb.connect().sql(query).fetchall():
        path = f"stream={stream}/model={model}/version={version}/day={day.isoformat()}"
        out.append(
            {
                "stream": stream,
                "model": model,
                "version": version,
                "day": day.isoformat(),
                "rows": count,
                "bytes": sizes[path],
            }
        )
    return out


def labelled(root: Path) -> str:
    """The dataset's rows with ``label`` filled from the labels (imported, or sent by devices:
    the newest of each id)."""
    from cloud.labels import labels_sql  # it builds on ``source``

    return (
        f"(WITH labels AS ({labels_sql(root)}) SELECT d.* REPLACE (coalesce(l.label, d.label) "
        f"AS label) FROM {source(root)} d LEFT JOIN labels l ON l.id = d.dev || ':' || d.boot "
        "|| ':' || d.seq)"
    )


def selected(root: Path, filters: Filters, columns: str = "*") -> tuple[str, list[Any]]:
    """SQL for the rows ``filters`` picks, one per record id, in id order, labels filled in."""
    where, values = filters.where()
    sql = (
        f"SELECT {columns} FROM {labelled(root)} WHERE {where} "
        "QUALIFY row_number() OVER (PARTITION BY dev, boot, seq ORDER BY ts_ms) = 1 "
        "ORDER BY dev, boot, seq"
    )
    return sql, values


def _stack(rows: list[tuple], index: int, what: str) -> tuple[np.ndarray, str, list[int]]:
    """The tensors of column ``index`` as one array; mixed shapes or dtypes are refused."""
    kinds = Counter((row[index + 1], tuple(row[index + 2] or ())) for row in rows)
    if any(dtype is None for dtype, _ in kinds):
        raise ExportError(f"some rows have no {what} tensor: use --format parquet")
    if len(kinds) > 1:
        seen = ", ".join(f"{dtype}{list(shape)} x{n}" for (dtype, shape), n in kinds.items())
        raise ExportError(
            f"rows hold {len(kinds)} {what} shapes ({seen}): narrow with --model/--version"
        )
    (dtype, shape), _ = kinds.popitem()
    buffer = b"".join(row[index] for row in rows)
    array = np.frombuffer(buffer, dtype=np.dtype(DTYPES[dtype])).reshape(len(rows), *shape)
    return array, dtype, list(shape)


def export(root: Path, filters: Filters, fmt: str, out: Path) -> dict[str, Any]:
    """Write the rows to ``out`` and the manifest to ``<out>.manifest.json``; the manifest."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if not files(root):
        raise ExportError(f"no dataset files under {root}")
    connection = duckdb.connect()
    columns = (
        "input, input_dtype, input_shape, scores, label, class, model, version, dev, boot, seq"
    )
    sql, values = selected(root, filters, columns)
    rows = connection.execute(sql, values).fetchall()
    if not rows:
        raise ExportError(f"no rows match {json.dumps(asdict(filters))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tensor: dict[str, Any] | None = None
    if fmt == "npz":
        inputs, dtype, shape = _stack(rows, 0, "input")
        tensor = {"dtype": dtype, "shape": shape}
        lengths = {len(row[3] or ()) for row in rows}
        if len(lengths) > 1 or 0 in lengths:
            raise ExportError("rows hold score vectors of different lengths or none")
        arrays = {
            "inputs": inputs,
            "scores": np.asarray([row[3] for row in rows], dtype=np.float32),
            "labels": np.asarray([-1 if row[4] is None else row[4] for row in rows], np.int64),
            "ids": np.asarray([f"{row[8]}:{row[9]}:{row[10]}" for row in rows]),
        }
        _write_npz(out, arrays)
    else:
        full, values = selected(root, filters)
        _write_parquet(connection, full, values, out)
        kinds = {(row[1], tuple(row[2])) for row in rows if row[1] is not None}
        if len(kinds) == 1:
            dtype, shape = kinds.pop()
            tensor = {"dtype": dtype, "shape": list(shape)}
    versions = Counter((row[6], row[7]) for row in rows)
    manifest = {
        "format": fmt,
        "files": [out.name],
        "rows": len(rows),
        "input": tensor,
        "classes": sorted({row[5] for row in rows if row[5] is not None}),
        "models": [
            {"model": model, "version": version, "rows": n}
            for (model, version), n in sorted(versions.items())
        ],
        "filters": asdict(filters),
        "dataset": str(root),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    path = out.with_name(out.name + ".manifest.json")
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _write_npz(out: Path, arrays: dict[str, np.ndarray]) -> None:
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(out.parent)


def _write_parquet(connection, sql: str, values: list[Any], out: Path) -> None:
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    target = str(temp).replace("'", "''")
    try:
        connection.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet)", values)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(out.parent)
