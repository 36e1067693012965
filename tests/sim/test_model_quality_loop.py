"""The loop closed in the simulator (scenarios/model_quality_loop.toml), end to end on real
agents, mosquitto, the gateway curating and the cloud receiver writing Parquet: drift, capture,
the samples read back through DuckDB as a training job would, labels, an evaluation that
prefers the retrained model, its staged rollout, and the fleet's measured accuracy recovering;
the report's accuracy is checked against an independent computation from the labels and
outputs in the dataset. (The capture half alone, scenarios/by-hand/data_loop.toml, runs by
hand.)"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from cloud.queries import source
from tests.sim.test_scenarios import REPO, assert_adds_up, sim

pytestmark = pytest.mark.slow


def independent_accuracy(root) -> dict[tuple[int, str], tuple[int, int]]:
    """(version, campaign) -> (correct, n), from the samples' own scores and the label files."""
    labels: dict[str, int] = {}
    for path in sorted((root / "labels").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            labels[row["id"]] = row["label"]
    rows = duckdb.sql(
        f"SELECT DISTINCT ON (dev, boot, seq) dev || ':' || boot || ':' || seq, version, "
        f"campaign, scores FROM {source(root)} WHERE stream = 'samples'"
    ).fetchall()
    out: dict[tuple[int, str], list[int]] = {}
    for record_id, version, campaign, scores in rows:
        if record_id in labels:
            tally = out.setdefault((version, campaign), [0, 0])
            tally[0] += int(np.argmax(scores)) == labels[record_id]
            tally[1] += 1
    return {key: (correct, n) for key, (correct, n) in out.items()}


def assert_samples_ready_to_label(root, report: dict) -> None:
    """What capture and curation delivered, as DuckDB reads it: every sample once, its trigger
    holding on its own scores, its tensor decoding to the model's input, a label column; the
    raw telemetry curation let through, and a summary of every device's inferences."""
    dataset = source(root)
    rows = duckdb.sql(
        f"SELECT DISTINCT ON (dev, boot, seq) campaign, trigger, margin, scores, input, "
        f"input_dtype FROM {dataset} WHERE stream = 'samples'"
    ).fetchall()
    assert len(rows) == report["samples_in_dataset"] <= report["samples_captured"]
    relation = duckdb.sql(f"SELECT * FROM {dataset}")
    types = {c: str(t) for c, t in zip(relation.columns, relation.dtypes, strict=True)}
    assert types["label"] == "BIGINT"
    for campaign, trigger, margin, scores, data, dtype in rows:
        top = sorted(scores, reverse=True)
        assert top[0] - top[1] == pytest.approx(margin, abs=1e-5)
        if campaign == "hard":
            assert trigger == "margin < 0.2" and margin < 0.2
        assert dtype == "float32" and np.frombuffer(data, "<f4").shape == (490,)
    telemetry = duckdb.sql(
        f"SELECT count(DISTINCT (dev, boot, seq)) FROM {dataset} WHERE stream = 'telemetry'"
    ).fetchall()[0][0]
    assert telemetry == report["telemetry_delivered_unique"] > 0
    summarised = duckdb.sql(
        f"SELECT dev, sum(CAST(json_extract(record, '$.records') AS BIGINT)) FROM {dataset} "
        "WHERE stream = 'summaries' GROUP BY dev"
    ).fetchall()
    assert {dev for dev, _ in summarised} == {f"dev{i:03d}" for i in range(4)}
    assert sum(n for _, n in summarised) <= report["telemetry_sent"]
    assert report["cloud_bytes"] < report["cloud_bytes_unfiltered"]


def test_the_fleet_closes_its_own_loop(tmp_path):
    done, report = sim(REPO / "scenarios" / "model_quality_loop.toml", tmp_path, timeout=600)
    assert report is not None, done.stderr[-3000:]
    assert done.returncode == 0, json.dumps(report["violations"]) + done.stderr[-2000:]
    assert_adds_up(report)
    quality = {(q["version"], q["campaign"]): q for q in report["quality"]}
    independent = independent_accuracy(tmp_path / "run" / "cloud" / "dataset")
    assert set(quality) == set(independent)
    for key, (correct, n) in independent.items():
        assert quality[key]["n"] == n and quality[key]["accuracy"] == pytest.approx(
            correct / n, abs=1e-4
        )
    before, after = quality[1, "random-before"], quality[3, "random-after"]
    assert after["accuracy"] > before["accuracy"], (before, after)
    assert quality[1, "hard"]["accuracy"] < 0.7  # the incumbent fails what it finds hard
    assert_samples_ready_to_label(tmp_path / "run" / "cloud" / "dataset", report)
    (evaluation,) = report["evaluations"]
    assert evaluation["candidate"]["accuracy"] > evaluation["incumbent"]["accuracy"]
    assert evaluation["incumbent"]["version"] == 1
    assert report["events"].get("drift_alarm", 0) >= 1
