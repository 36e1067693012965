"""How good each model is in the field: its predictions joined with their labels on the record
id, grouped by version (or device, day, site), in DuckDB SQL over the dataset.

A prediction is an ``inference`` record's top-1 class or a ``sample``'s class; only labelled
ones count. Samples were kept by a campaign's trigger (low margin, say), so their accuracy is
that of the inputs the trigger chose, not of the fleet's traffic: each group says how many of
its rows are samples. Expected calibration error bins the top-1 confidence into ten equal bins
and weighs each bin's ``|accuracy - mean confidence|`` by its share of rows; it assumes the
scores are probabilities (a softmax output). Drift comes from the gateway's summaries: per
model, version and UTC day, the mean and the maximum of the windows' largest PSI, and alarms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from cloud.intervals import wilson
from cloud.labels import labels_sql
from cloud.queries import source

GROUPINGS = {
    "version": "version",
    "device": "dev",
    "day": "CAST(day AS VARCHAR)",
    # Each campaign a phase of the loop (inference records: none).
    "campaign": "coalesce(campaign, '-')",
    "version-campaign": "CAST(version AS VARCHAR) || '/' || coalesce(campaign, '-')",
    "site": "coalesce(site, '-')",  # the gateway that sent the batch
}
BINS = 10


class QualityError(ValueError):
    """The question cannot be answered over this dataset; the message says why."""


@dataclass(frozen=True)
class Question:
    by: str = "version"
    model: str | None = None


def _columns(connection: duckdb.DuckDBPyConnection, root: Path) -> set[str]:
    rows = connection.sql(f"DESCRIBE SELECT * FROM {source(root)}").fetchall()
    return {row[0] for row in rows}


def _rows_sql(root: Path, group: str, model: str | None) -> tuple[str, list[Any]]:
    """Labelled predictions, one per record id: ``model, grp, stream, class, confidence,
    label, correct``."""
    where, values = "stream IN ('samples', 'telemetry') AND kind IN ('sample', 'inference')", []
    if model is not None:
        where += " AND model = ?"
        values.append(model)
    sql = (
        f"WITH labels AS ({labels_sql(root)}), predictions AS (SELECT *, dev || ':' || boot "
        f"|| ':' || seq AS id FROM {source(root)} WHERE {where} AND class IS NOT NULL QUALIFY "
        "row_number() OVER (PARTITION BY dev, boot, seq ORDER BY ts_ms) = 1) "
        f"SELECT p.model, {group} AS grp, p.stream, p.class, p.confidence, l.label, "
        "(p.class = l.label) AS correct FROM predictions p JOIN labels l USING (id)"
    )
    return sql, values


def measure(root: Path, question: Question) -> dict[str, Any]:
    """The full answer: every group's accuracy, classes, confusion and calibration, and drift."""
    if not any(root.glob("stream=*")):
        raise QualityError(f"no dataset files under {root}")
    connection = duckdb.connect()
    notes = []
    if question.by == "site" and "site" not in _columns(connection, root):
        raise QualityError(
            "--by site: this dataset was written before records carried their site; "
            "group by version, device or day"
        )
    if question.by in GROUPINGS:
        group = GROUPINGS[question.by]
    else:
        raise QualityError(f"--by {question.by}: one of {', '.join(GROUPINGS)}")
    rows, values = _rows_sql(root, group, question.model)
    connection.execute(f"CREATE TEMP TABLE labelled AS {rows}", values)

    groups: dict[tuple[str, Any], dict[str, Any]] = {}
    totals = connection.sql(
        "SELECT model, grp, count(*), sum(correct::INT), count(*) FILTER (stream = 'samples'), "
        "max(greatest(class, label)) + 1 FROM labelled GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    for model, grp, n, correct, samples, classes in totals:
        low_high = wilson(correct, n)
        groups[model, grp] = {
            "model": model,
            question.by: grp,
            "n": n,
            "samples": samples,
            "records": n - samples,
            "correct": correct,
            "accuracy": correct / n,
            "interval": list(low_high) if low_high else None,
            "confusion": [[0] * classes for _ in range(classes)],
            "calibration": [],
        }
    cells = connection.sql("SELECT model, grp, label, class, count(*) FROM labelled GROUP BY ALL")
    for model, grp, label, predicted, count in cells.fetchall():
        groups[model, grp]["confusion"][label][predicted] = count
    bins = connection.sql(
        f"SELECT model, grp, least(greatest(floor(confidence * {BINS}), 0), {BINS - 1})::INT AS "
        "bin, count(*), sum(correct::INT), avg(confidence) FROM labelled WHERE confidence IS "
        "NOT NULL GROUP BY ALL ORDER BY ALL"
    )
    for model, grp, number, n, correct, confidence in bins.fetchall():
        groups[model, grp]["calibration"].append(
            {"bin": number, "n": n, "accuracy": correct / n, "confidence": confidence}
        )
    ece = connection.sql(
        f"SELECT model, grp, sum(abs(hits - confidences)) / sum(n) FROM (SELECT model, grp, "
        f"least(greatest(floor(confidence * {BINS}), 0), {BINS - 1}) AS bin, count(*) AS n, "
        "sum(correct::INT) AS hits, sum(confidence) AS confidences FROM labelled WHERE "
        "confidence IS NOT NULL GROUP BY ALL) GROUP BY ALL"
    )
    for model, grp, value in ece.fetchall():
        groups[model, grp]["ece"] = value
    for group in groups.values():
        group.setdefault("ece", None)
        group["classes"] = _per_class(group["confusion"])
    if not groups:
        notes.append("no labelled predictions: import labels (edgefleet cloud label import)")
    return {
        "dataset": str(root),
        "by": question.by,
        "model": question.model,
        "groups": list(groups.values()),
        "drift": drift(connection, root, question.model),
        "notes": notes,
    }


def _per_class(confusion: list[list[int]]) -> list[dict[str, Any]]:
    """Precision and recall of each class seen as a label or a prediction (rows: labels)."""
    out = []
    for cls, row in enumerate(confusion):
        support = sum(row)
        predicted = sum(line[cls] for line in confusion)
        if not support and not predicted:
            continue
        hits = row[cls]
        out.append(
            {
                "class": cls,
                "support": support,
                "predicted": predicted,
                "precision": hits / predicted if predicted else None,
                "recall": hits / support if support else None,
            }
        )
    return out


def drift(connection: duckdb.DuckDBPyConnection, root: Path, model: str | None) -> list[dict]:
    """Per model, version and day: summaries, drift windows, mean and max PSI, alarms."""
    where, values = "stream = 'summaries' AND kind = 'summary'", []
    if model is not None:
        where += " AND model = ?"
        values.append(model)
    sql = (
        "SELECT model, version, CAST(day AS VARCHAR), count(*), sum(windows), avg(psi), "
        "max(psi), sum(alarms) FROM (SELECT model, version, day, CAST(record ->> "
        "'$.drift.windows' AS BIGINT) AS windows, CAST(record ->> '$.drift.alarms' AS BIGINT) "
        "AS alarms, CAST(record ->> '$.drift.max_psi' AS DOUBLE) AS psi FROM "
        f"{source(root)} WHERE {where} QUALIFY row_number() OVER (PARTITION BY dev, boot, seq "
        "ORDER BY ts_ms) = 1) GROUP BY ALL ORDER BY ALL"
    )
    names = ("model", "version", "day", "summaries", "windows", "mean_psi", "max_psi", "alarms")
    found = connection.execute(sql, values).fetchall()
    return [dict(zip(names, row, strict=True)) for row in found]
