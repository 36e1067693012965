"""Records built from real inference: ids, top-k, input summary, raw sampling, drift records."""

from __future__ import annotations

import json

import numpy as np

from agent.config import InferenceConfig
from agent.drift import LiveDrift
from agent.engine import Engine
from agent.pipeline import ModelIdentity, Pipeline
from agent.sources import Chunk
from protocol.drift import feature_summary
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
