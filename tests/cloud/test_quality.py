"""``cloud quality``: accuracy with its Wilson interval, precision, recall, confusion and
calibration per group, and drift from the summaries, all from DuckDB over real Parquet files,
checked against numpy over the same rows and against a calibration error worked by hand."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from cloud.labels import import_labels
from cloud.quality import QualityError, Question, measure
from edgefleet.cli import main
from protocol import dataset
from tests.cloud.records import TS_MS, body, common, inference, summary, tensor

DAY_MS = 86_400_000
DEVICES = ("cam-0", "cam-1", "cam-2")


def predicted(rng: np.random.Generator, i: int) -> tuple[dict, dict]:
    """A record (every fourth one a sample) and what it predicts, for the computation in numpy."""
    version, dev = 1 + i % 2, DEVICES[i % 3]
    cls, confidence = int(rng.integers(0, 4)), int(rng.integers(20, 65)) / 64  # exact in float32
    ts_ms = TS_MS + (i // 2 % 2) * DAY_MS + i
    if i % 4 == 0:
        scores = [(1 - confidence) / 3] * 4
        scores[cls] = confidence
        record = common("sample", i, version=version, dev=dev) | {
            "campaign": "c", "trigger": "random < 1", "class": cls, "confidence": confidence,
            "margin": 0.1, "drift": False, "scores": scores,
            "input": tensor(np.zeros(1, np.float32)),
        }  # fmt: skip
    else:
        top = [[cls, confidence], [(cls + 1) % 4, confidence / 4]]
        record = inference(i, version=version, dev=dev) | {"top": top}
    record["ts_ms"] = ts_ms
    day = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).date().isoformat()
    row = {"version": version, "device": dev, "day": day, "class": cls, "conf": confidence,
           "sample": i % 4 == 0}  # fmt: skip
    return record, {**row, "id": f"{dev}:{record['boot']}:{i}"}


@pytest.fixture
def fleet(tmp_path):
    """200 predictions of two versions, three devices and two days, 160 of them labelled."""
    rng = np.random.default_rng(7)
    root = tmp_path / "dataset"
    records, rows = zip(*(predicted(rng, i) for i in range(200)), strict=True)
    # Two sites' gateways; one batch the first site sent twice.
    dataset.write_batch(root, "a" * 40, dataset.parse_body(body(*records[:120]), "north"))
    dataset.write_batch(root, "c" * 40, dataset.parse_body(body(*records[120:]), "south"))
    dataset.write_batch(root, "b" * 40, dataset.parse_body(body(*records[:50]), "north"))
    for i, row in enumerate(rows):
        row["site"] = "north" if i < 120 else "south"
    lines = ["id,label"]
    for row in rows[:160]:
        row["label"] = row["class"] if rng.random() < 0.7 else int(rng.integers(0, 4))
        lines.append(f"{row['id']},{row['label']}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    import_labels(root, tmp_path / "labels.csv")
    return root, [row for row in rows if "label" in row]


def wilson_by_roots(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    """The Wilson bounds as the two roots of (p_hat - p)^2 = z^2 p (1 - p) / n."""
    p_hat = k / n
    a = 1 + z * z / n
    roots = np.roots([a, -(2 * p_hat + z * z / n), p_hat * p_hat])
    return sorted(float(r) for r in roots.real)


def expected(rows: list[dict], by: str) -> dict:
    out = {}
    for key in sorted({row[by] for row in rows}):
        mine = [row for row in rows if row[by] == key]
        labels = np.array([row["label"] for row in mine])
        classes = np.array([row["class"] for row in mine])
        conf = np.array([row["conf"] for row in mine])
        right = labels == classes
        confusion = np.zeros((4, 4), int)
        np.add.at(confusion, (labels, classes), 1)
        bins = np.minimum((conf * 10).astype(int), 9)
        ece = sum(abs(right[bins == b].sum() - conf[bins == b].sum()) for b in range(10)) / len(
            mine
        )
        out[key] = {
            "n": len(mine), "correct": int(right.sum()), "accuracy": right.mean(),
            "interval": wilson_by_roots(int(right.sum()), len(mine)), "ece": ece,
            "confusion": confusion.tolist(),
            "precision": confusion.diagonal() / confusion.sum(axis=0),
            "recall": confusion.diagonal() / confusion.sum(axis=1),
        }  # fmt: skip
    return out


@pytest.mark.parametrize("by", ["version", "device", "day", "site"])
def test_every_number_matches_numpy_over_the_same_rows(fleet, by):
    root, rows = fleet
    answer = measure(root, Question(by=by))
    want = expected(rows, by)
    assert [g[by] for g in answer["groups"]] == list(want)
    for group in answer["groups"]:
        w = want[group[by]]
        assert group["model"] == "kws"
        assert (group["n"], group["correct"]) == (w["n"], w["correct"])
        assert group["accuracy"] == pytest.approx(w["accuracy"])
        assert group["interval"] == pytest.approx(w["interval"], abs=1e-9)
        assert group["confusion"] == w["confusion"]
        assert group["ece"] == pytest.approx(w["ece"])
        precision = [c["precision"] for c in group["classes"]]
        recall = [c["recall"] for c in group["classes"]]
        assert precision == pytest.approx(w["precision"].tolist())
        assert recall == pytest.approx(w["recall"].tolist())
    assert sum(g["samples"] for g in answer["groups"]) == sum(r["sample"] for r in rows)


def test_the_calibration_error_of_a_hand_worked_case(tmp_path):
    root = tmp_path / "dataset"
    cases = [(0.95, True), (0.95, False), (0.55, True), (0.45, False), (0.15, False)]
    records = [inference(i) | {"top": [[0, conf], [1, 0.0]]} for i, (conf, _) in enumerate(cases)]
    dataset.write_batch(root, "c" * 40, dataset.parse_body(body(*records)))
    labels = "".join(f"cam-1:{records[i]['boot']}:{i},{0 if ok else 1}\n"
                     for i, (_, ok) in enumerate(cases))  # fmt: skip
    (tmp_path / "l.csv").write_text("id,label\n" + labels)
    import_labels(root, tmp_path / "l.csv")
    [group] = measure(root, Question())["groups"]
    # bin 9: 2 rows, 1 right, confidence 0.95 -> 2/5 * |0.5 - 0.95| = 0.18
    # bins 5, 4, 1: one row each -> (|1 - 0.55| + |0 - 0.45| + |0 - 0.15|) / 5 = 0.21
    assert group["ece"] == pytest.approx(0.39)
    assert [(b["bin"], b["n"]) for b in group["calibration"]] == [(1, 1), (4, 1), (5, 1), (9, 2)]


def test_drift_per_version_and_day_from_the_summaries(fleet):
    root, _ = fleet
    # version, alarms, day, max_psi
    windows = [(1, 0, 0, 0.1), (1, 0, 0, 0.3), (1, 2, 1, 0.9), (2, 2, 0, 0.2)]
    records = []
    for i, (version, alarms, day, psi) in enumerate(windows):
        record = summary(500 + i, version=version)
        record["ts_ms"] += int(day * DAY_MS)
        record["drift"] = {"windows": 3, "alarms": alarms, "max_psi": psi}
        records.append(record)
    dataset.write_batch(root, "d" * 40, dataset.parse_body(body(*records)))
    drift = measure(root, Question())["drift"]
    assert drift == [
        {"model": "kws", "version": 1, "day": "2023-11-14", "summaries": 2, "windows": 6,
         "mean_psi": pytest.approx(0.2), "max_psi": 0.3, "alarms": 0},
        {"model": "kws", "version": 1, "day": "2023-11-15", "summaries": 1, "windows": 3,
         "mean_psi": pytest.approx(0.9), "max_psi": 0.9, "alarms": 2},
        {"model": "kws", "version": 2, "day": "2023-11-14", "summaries": 1, "windows": 3,
         "mean_psi": pytest.approx(0.2), "max_psi": 0.2, "alarms": 2},
    ]  # fmt: skip


def test_by_site_reads_files_written_before_records_carried_their_site(fleet, tmp_path):
    """Files without the column read it as null (grouped under '-') beside newer ones."""
    root, _ = fleet
    old = dataset.table(dataset.parse_body(body(predicted(np.random.default_rng(1), 999)[0]))
                        .popitem()[1]).drop(["site"])  # fmt: skip
    target = next(root.glob("stream=telemetry/model=*/version=*/day=*"))
    import pyarrow.parquet as pq

    pq.write_table(old, target / ("e" * 40 + ".parquet"))
    sites = {g["site"] for g in measure(root, Question(by="site"))["groups"]}
    assert sites == {"north", "south"}  # the old row has no label: not a prediction to count
    with pytest.raises(QualityError, match="--by planet"):
        measure(root, Question(by="planet"))


def test_cli_table_and_json(fleet, capsys):
    root, rows = fleet
    argv = ["cloud", "quality", "--dataset", str(root)]
    assert main([*argv, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [g["n"] for g in answer["groups"]] == [
        sum(1 for r in rows if r["version"] == v) for v in (1, 2)
    ]
    assert main(argv) == 0  # piped: tab-separated tables
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t") == ["model", "version", "n", "samples", "accuracy", "95% interval",
                                  "ece"]  # fmt: skip
    assert out[1].startswith("kws\t1\t") and out[3] == ""
    assert main([*argv, "--by", "site", "--json"]) == 0
    assert {g["site"] for g in json.loads(capsys.readouterr().out)["groups"]} == {"north", "south"}
    assert main(["cloud", "quality", "--dataset", str(root / "nope")]) == 2
