"""Curation on a real SQLite database: each rule does what its name says, drops are counted by
rule, quotas and dedup memory persist, summaries cover every record and their statistics match
an independent computation."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edgefleet import tomlconfig
from edgefleet.errors import UserError
from gateway.store import counter, open_database, transaction
from gateway.telemetry import curation_rules
from gateway.telemetry.curation import Curator
from gateway.telemetry.spool import UplinkSpool
from gateway.telemetry.summaries import CONFIDENCE_BINS, Summaries, latency_bin, latency_of_bin
from protocol.telemetry import Record, RecordId, Sample, Tensor


def rules(text: str) -> curation_rules.CurationConfig:
    import tomllib

    table = tomlconfig.Table("gateway.toml", "curation", tomllib.loads(text), Path("."))
    config = curation_rules.parse(table)
    assert config is not None
    return config


def inference(seq: int, cls: int, best: float, second: float, lat_us: int = 1000) -> dict:
    return {
        "dev": "dev-1", "boot": "ab" * 8, "seq": seq, "ts_ms": 1_700_000_000_000 + seq,
        "kind": "inference", "model": "kws", "version": 1,
        "top": [[cls, best], [(cls + 1) % 4, second]], "lat_us": lat_us,
        "in": {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "feat": [0.5]},
    }  # fmt: skip


def sample(seq: int, cls: int, margin: float, data: bytes = b"\0" * 40) -> dict:
    scores = [0.0] * 4
    scores[cls], scores[(cls + 1) % 4] = 0.5, 0.5 - margin
    body = Sample(
        "kws", 1, "hard", "margin < 0.2", tuple(scores), False, Tensor("float32", (10,), data)
    )
    record = Record(RecordId("dev-1", "cd" * 8, seq), 1_700_000_000_000 + seq, body)
    return json.loads(record.encode())


def pairs(records: list[dict]) -> list[tuple[dict, bytes]]:
    return [(r, json.dumps(r, separators=(",", ":")).encode()) for r in records]


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return open_database(tmp_path / "gateway.db")


def curate(conn, curator: Curator, stream: str, records: list[dict]):
    return transaction(conn, lambda: curator.apply_sync(conn, "dev-1", stream, pairs(records)))


def test_rules_decide_in_order_and_count_their_drops(conn):
    config = rules(
        """
        default = "drop"
        [[rule]]
        name = "no-latency-outliers"
        stream = "telemetry"
        when = "latency_ms > 50"
        action = "drop"
        [[rule]]
        name = "one-in-ten"
        stream = "telemetry"
        action = "sample"
        every = 10
        [[rule]]
        name = "hard"
        stream = "samples"
        when = "margin < 0.2"
        action = "keep"
        """
    )
    curator = Curator(config, seed=1)
    telemetry = [inference(i, i % 4, 0.9, 0.05, 90_000 if i % 7 == 0 else 1000) for i in range(100)]
    kept = curate(conn, curator, "telemetry", telemetry).kept
    slow = sum(1 for i in range(100) if i % 7 == 0)
    assert len(kept) == -(-(100 - slow) // 10)  # one in ten of what the first rule let through
    assert all(json.loads(k)["lat_us"] == 1000 for k in kept)
    samples = [sample(i, i % 4, 0.05 if i % 2 else 0.4) for i in range(10)]
    result = curate(conn, curator, "samples", samples)
    assert [json.loads(k)["seq"] for k in result.kept] == [1, 3, 5, 7, 9]
    assert result.dropped == {"default": 5}
    assert counter(conn, "curation_dropped:telemetry:no-latency-outliers") == slow
    assert counter(conn, "curation_dropped:telemetry:one-in-ten") == (100 - slow) - len(kept)


def test_quota_dedup_and_scrub_persist_across_a_restart(conn, tmp_path):
    config = rules(
        """
        default = "keep"
        [[rule]]
        action = "dedup"
        stream = "samples"
        [[rule]]
        name = "balanced"
        action = "quota"
        stream = "samples"
        per_class = 2
        [[rule]]
        action = "scrub"
        stream = "telemetry"
        fields = ["in"]
        """
    )
    first = [sample(i, i % 2, 0.1, bytes([i]) * 40) for i in range(6)]
    kept = curate(conn, Curator(config), "samples", first).kept
    assert sorted(json.loads(k)["class"] for k in kept) == [0, 0, 1, 1]
    # A new curator on the same database: the quota is full, and the same inputs are known.
    again = Curator(config)
    repeat = [sample(10 + i, i % 2, 0.1, bytes([i]) * 40) for i in range(2)]  # seen before
    fresh = [sample(20 + i, 2, 0.1, bytes([100 + i]) * 40) for i in range(3)]
    result = curate(conn, again, "samples", repeat + fresh)
    assert [json.loads(k)["seq"] for k in result.kept] == [20, 21]
    assert result.dropped == {"0-dedup": 2, "balanced": 1}
    scrubbed = curate(conn, again, "telemetry", [inference(1, 0, 0.9, 0.1)]).kept
    assert "in" not in json.loads(scrubbed[0]) and json.loads(scrubbed[0])["seq"] == 1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[rule]]\naction = "sample"', "every"),
        ('[[rule]]\naction = "quota"', "per_device"),
        ('[[rule]]\naction = "scrub"\nfields = ["dev"]', "cannot remove 'dev'"),
        ('[[rule]]\naction = "keep"\nwhen = "margin <"', "trigger: ends early"),
        ('[[rule]]\naction = "shred"', "must be one of"),
        ('[[rule]]\nname = "a"\n[[rule]]\nname = "a"', "names must differ"),
        ('[[rule]]\naction = "keep"\nwhen = "__import__"', "unknown field"),
    ],
)
def test_bad_rules_are_refused_in_one_line(text: str, says: str):
    with pytest.raises(UserError, match=says) as caught:
        rules(text)
    assert "\n" not in str(caught.value)


def test_summaries_cover_every_record_and_their_percentiles_hold(conn):
    store_spool = UplinkSpool(None, 1 << 30)  # only its _sync methods are used, on this thread
    store_spool._load_sync(conn)
    summaries = Summaries(60, "ee" * 8)
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 500)
    latency = rng.lognormal(7, 0.5, 500).astype(int)
    records = [
        inference(i, i % 3, float(c), 0.0, int(lat))
        for i, (c, lat) in enumerate(zip(confidence, latency, strict=True))
    ]
    for chunk in range(0, 500, 100):
        part = records[chunk : chunk + 100]
        dropped = {i for i in range(len(part)) if (chunk + i) % 10}  # all but one in ten
        transaction(
            conn, lambda p=part, d=dropped: summaries.add_sync(conn, "dev-1", "telemetry", p, d)
        )
    assert (
        transaction(conn, lambda: summaries.flush_sync(conn, store_spool, 1_700_000_060_000)) == 0
    )
    summaries.load_sync(conn)  # what a restarted gateway would find
    later = 1_700_000_000_000 + 180_000
    assert transaction(conn, lambda: summaries.flush_sync(conn, store_spool, later)) == 1
    (data,) = conn.execute("SELECT data FROM records").fetchone()
    summary = json.loads(data)
    assert summary["kind"] == "summary" and summary["records"] == 500
    assert summary["classes"] == {str(c): int((np.arange(500) % 3 == c).sum()) for c in range(3)}
    for q in (50, 90, 99):
        got = summary["confidence"][f"p{q}"]
        assert abs(got - np.percentile(confidence, q)) <= 1.5 / CONFIDENCE_BINS
        want_bin = latency_bin(float(np.percentile(latency, q)))
        assert abs(summary["latency_us"][f"p{q}"] - latency_of_bin(want_bin)) <= latency_of_bin(
            want_bin + 1
        ) - latency_of_bin(want_bin - 1)
    assert summary["confidence"]["mean"] == pytest.approx(confidence.mean(), abs=1e-6)
    assert conn.execute("SELECT count(*) FROM summary_windows").fetchone() == (0,)
    listed = summary["curated_out"]["telemetry"]["ab" * 8]
    assert {s for a, b in listed for s in range(a, b + 1)} == {i for i in range(500) if i % 10}
    assert summary["curated_out_unlisted"] == 0
