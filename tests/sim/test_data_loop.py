"""The data loop end to end (scenarios/data_loop.toml): real agents capturing on a drifting
fleet, mosquitto, the gateway curating, and the cloud receiver writing Parquet; the samples are
then read back through DuckDB as a training job would, label column and all."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from cloud.queries import source
from tests.sim.test_scenarios import REPO, assert_adds_up, sim

pytestmark = pytest.mark.slow
DRIFTED = {"dev000", "dev001"}


def test_the_loop_from_drift_to_a_dataset_ready_to_label(tmp_path):
    done, report = sim(REPO / "scenarios" / "data_loop.toml", tmp_path)
    assert report is not None, done.stderr[-3000:]
    assert done.returncode == 0, json.dumps(report["violations"]) + done.stderr[-2000:]
    assert_adds_up(report)
    dataset = source(tmp_path / "run" / "cloud" / "dataset")
    rows = duckdb.sql(
        f"SELECT dev, boot, seq, campaign, trigger, margin, scores, input, input_dtype, "
        f"input_shape, label FROM {dataset} WHERE stream = 'samples'"
    ).fetchall()
    ids = {(r[0], r[1], r[2]) for r in rows}
    assert len(ids) == report["samples_in_dataset"] >= 50
    assert report["samples_captured"] >= report["samples_in_dataset"]
    relation = duckdb.sql(f"SELECT * FROM {dataset}")
    types = {c: str(t) for c, t in zip(relation.columns, relation.dtypes, strict=True)}
    assert types["label"] == "BIGINT" and all(r[10] is None for r in rows)
    for *_, campaign, trigger, margin, scores, data, dtype, shape, _ in rows:
        assert (campaign, trigger, dtype) == ("low-margin", "margin < 0.2", "float32")
        assert list(shape) in ([49, 10], [1, 49, 10]), shape
        top = sorted(scores, reverse=True)
        assert top[0] - top[1] == pytest.approx(margin, abs=1e-5) and margin < 0.2
        assert np.frombuffer(data, "<f4").shape == (490,)
    from_drifted = sum(r[0] in DRIFTED for r in rows) / len(rows)
    assert from_drifted >= 0.8, f"only {from_drifted:.0%} of the hard inputs came from drift"
    # Raw telemetry that curation let through, and a summary of every device's inferences.
    telemetry = duckdb.sql(
        f"SELECT count(DISTINCT (dev, boot, seq)) FROM {dataset} WHERE stream = 'telemetry'"
    ).fetchall()[0][0]
    assert telemetry == report["telemetry_delivered_unique"] > 0
    summarised = duckdb.sql(
        f"SELECT dev, sum(CAST(json_extract(record, '$.records') AS BIGINT)) FROM {dataset} "
        f"WHERE stream = 'summaries' GROUP BY dev"
    ).fetchall()
    assert {dev for dev, _ in summarised} == {f"dev{i:03d}" for i in range(4)}
    assert sum(n for _, n in summarised) <= report["telemetry_sent"]
    assert report["cloud_bytes"] < report["cloud_bytes_unfiltered"] * 0.2
