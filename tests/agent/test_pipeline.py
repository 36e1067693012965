"""Records built from real inference: ids, top-k, input summary, raw sampling, drift records."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from agent.config import InferenceConfig
from agent.drift import LiveDrift
from agent.pipeline import ModelIdentity, Pipeline
from agent.sources import Chunk
from edgefleet.engine import Engine
from protocol.drift import DriftReference, feature_summary
from protocol.telemetry import Record


def test_records_from_a_chunk(models):
    engine = Engine(models("kws_int8_v1"))
    drift = LiveDrift(None, 10, engine.classes, 8, 0.25, 10)
    model = ModelIdentity("kws", 2, "0" * 64)
    config = InferenceConfig(top_k=2, raw_every=3)
    pipeline = Pipeline("dev1", engine, None, drift, model, config, print, print)
    samples = np.random.default_rng(5).normal(size=(10, 49, 10)).astype(np.float32)
    chunk = Chunk(samples, np.arange(10, dtype=np.int64) + 1_000)
    result = engine.infer(samples)
    bodies, verdicts, unfit = pipeline._build(chunk, result, "00ff00ff", 40)
    assert unfit == 0

    records = [Record.from_json(json.loads(b)) for b in bodies]
    assert len(verdicts) == 1 and len(records) == 11, "10 inferences and one drift window"
    assert [r.id.seq for r in records] == list(range(40, 51))
    inferences, window = records[:10], records[10]
    assert window.body.kind == "drift" and window.body.window == 8 and not window.body.compared
    features = feature_summary(samples)
    for i, record in enumerate(inferences):
        body = record.body
        assert (record.id.device, record.id.boot, record.ts_ms) == ("dev1", "00ff00ff", 1000 + i)
        assert (body.model, body.version) == ("kws", 2)
        assert [c for c, _ in body.top] == list(np.argsort(-result.scores[i], kind="stable")[:2])
        assert body.top[0][1] >= body.top[1][1]
        assert np.isclose(body.summary.mean, samples[i].mean(), atol=1e-5)
        assert np.allclose(body.summary.features, features[i], atol=1e-4)
        if (40 + i) % 3 == 0:
            raw = np.frombuffer(body.raw.data, dtype="<i1").reshape(body.raw.shape)
            assert body.raw.dtype == "int8"
            assert np.array_equal(raw, engine.input.quantize(samples[i]))
        else:
            assert body.raw is None


def test_samples_that_are_not_finite_make_no_record(models):
    engine = Engine(models("kws_f32_v1"))
    drift = LiveDrift(None, 10, engine.classes, 100, 0.25, 10)
    model = ModelIdentity("kws", 1, "0" * 64)
    pipeline = Pipeline("dev1", engine, None, drift, model, InferenceConfig(), print, print)
    samples = np.zeros((5, 49, 10), np.float32)
    samples[2, 3, 4] = np.inf
    chunk = Chunk(samples, np.arange(5, dtype=np.int64))
    bodies, _, unfit = pipeline._build(chunk, engine.infer(samples), "00ff00ff", 7)
    assert unfit == 1
    records = [Record.from_json(json.loads(b)) for b in bodies]
    assert [r.id.seq for r in records] == [7, 8, 9, 10], "no gap where the sample was skipped"
    assert [r.ts_ms for r in records] == [0, 1, 3, 4]


async def test_a_window_in_progress_at_a_model_switch_is_closed_and_recorded(models, tmp_path):
    """The inputs counted for drift under the old model are reported under it, not lost: the
    window is closed at the switch (compared, as it holds more than half a window), and the
    new model starts a window of its own."""
    from agent.pipeline import Serving
    from agent.spool import Spool

    engine, other = Engine(models("kws_f32_v1")), Engine(models("kws_f32_v2_head"))
    samples = np.random.default_rng(9).normal(size=(60, 49, 10)).astype(np.float32)
    reference = DriftReference.build(samples, engine.infer(samples).scores)

    def drift() -> LiveDrift:
        return LiveDrift(reference, 10, engine.classes, 40, 0.25, 10)

    old, new = ModelIdentity("kws", 1, "1" * 64), ModelIdentity("kws", 2, "2" * 64)
    switched = asyncio.Event()

    async def source():
        for start in range(0, 60, 10):
            if start == 30:
                pipeline.serve(Serving(other, new, drift()))
                switched.set()
            yield Chunk(samples[start : start + 10], np.arange(start, start + 10, dtype=np.int64))

    async with Spool(tmp_path / "spool.db", 10_000_000) as spool:
        pipeline = Pipeline("dev1", engine, spool, drift(), old, InferenceConfig(), print, print)
        await pipeline.run(source())
        claim = await spool.claim(1000, 10_000_000, 0)
    records = [Record.from_json(json.loads(b)) for b in claim.bodies]
    windows = [r for r in records if r.body.kind == "drift"]
    assert switched.is_set() and len(records) == 60 + len(windows)
    closed = [w for w in windows if (w.body.model, w.body.version) == ("kws", 1)]
    assert [w.body.window for w in closed] == [30] and closed[0].body.compared
    assert all(w.body.version == 2 for w in windows if w not in closed)
    assert [r.id.seq for r in records] == list(range(len(records))), "no gap, no reuse"
