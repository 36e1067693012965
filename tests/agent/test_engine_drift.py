"""Engine selection, int8 quantization through a real model, and drift alarms on real models
fed by the synthetic generator (steady: no alarm; drifting: alarm), in-process and end to end."""

from __future__ import annotations

import importlib
import importlib.util
import json

import numpy as np
import pytest

from agent.bad_input import BadInput
from agent.config import SourceConfig
from agent.drift import LiveDrift, evaluate
from agent.sources import SyntheticSource
from edgefleet.engine import RUNTIMES, Engine, EngineError, check_tflite, choose_runtime
from protocol.drift import DriftReference, feature_summary
from protocol.model_meta import GateRef, ModelMeta
from tests.agent.agent_support import AgentProcess, Collector, agent_config, wait_for, write_config


def fake_importer(available: set[str]):
    def importer(module: str):
        if module not in available:
            raise ImportError(f"No module named {module!r}")
        return module

    return importer


def test_engine_choice_prefers_litert_then_tflite_runtime():
    both = set(RUNTIMES.values())
    assert choose_runtime("auto", fake_importer(both))[0] == "litert"
    only_tflite = {RUNTIMES["tflite-runtime"]}
    assert choose_runtime("auto", fake_importer(only_tflite))[0] == "tflite-runtime"
    assert choose_runtime("tflite-runtime", fake_importer(both))[0] == "tflite-runtime"
    with pytest.raises(EngineError, match=r"litert .*tflite-runtime"):
        choose_runtime("auto", fake_importer(set()))
    with pytest.raises(EngineError, match="litert"):
        choose_runtime("litert", fake_importer(only_tflite))


def test_real_engine_is_litert_and_tflite_runtime_is_optional(models):
    assert Engine(models("kws_f32_v1")).runtime == "litert"
    if importlib.util.find_spec("tflite_runtime") is None:
        with pytest.raises(EngineError, match="tflite-runtime"):
            Engine(models("kws_f32_v1"), "tflite-runtime")
    else:
        assert Engine(models("kws_f32_v1"), "tflite-runtime").runtime == "tflite-runtime"


def test_not_tflite_is_refused_before_the_runtime_sees_it(tmp_path):
    for data in (b"", b"PK\x03\x04" * 10, b"\x00" * 64):
        with pytest.raises(EngineError, match="TFL3"):
            check_tflite(data)
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 100)  # right magic, garbage inside
    with pytest.raises(EngineError):
        Engine(bad)


def test_int8_quantization_round_trip(models):
    f32, i8 = Engine(models("kws_f32_v1")), Engine(models("kws_int8_v1"))
    spec = i8.input
    assert spec.dtype == "int8" and spec.quantized and i8.output.quantized
    rng = np.random.default_rng(7)
    samples = rng.normal(0, 1, (400, *i8.sample_shape)).astype(np.float32)
    quantized = spec.quantize(samples)
    assert quantized.dtype == np.int8
    in_range = (samples > spec.dequantize(np.int8(-128))) & (
        samples < spec.dequantize(np.int8(127))
    )
    error = np.abs(spec.dequantize(quantized) - samples)[in_range]
    assert error.max() <= spec.scale / 2 + 1e-6

    a, b = f32.infer(samples), i8.infer(samples)
    assert b.scores.dtype == np.float32
    assert np.allclose(b.scores.sum(axis=1), 1.0, atol=0.05), "dequantized softmax sums to ~1"
    assert np.abs(a.scores - b.scores).mean() < 0.02
    assert (a.scores.argmax(axis=1) == b.scores.argmax(axis=1)).mean() >= 0.95
    steps = b.scores / i8.output.scale
    assert np.allclose(steps, np.round(steps), atol=1e-3), "outputs sit on the int8 grid"


async def synthetic(shape, seed, n, drift=0.0):
    source = SyntheticSource(SourceConfig(seed=seed, drift=drift), shape, 0.0, 250, BadInput())
    chunks = []
    async for chunk in source:
        chunks.append(chunk.samples)
        if sum(len(c) for c in chunks) >= n:
            return np.concatenate(chunks)[:n]


async def reference_for(engine, seed=1000, n=3000) -> DriftReference:
    samples = await synthetic(engine.sample_shape, seed, n)
    return DriftReference.build(samples, engine.infer(samples).scores)


@pytest.mark.parametrize("model", ["kws_f32_v1", "kws_int8_v1"])
async def test_drift_alarm_fires_on_drift_only(models, model):
    engine = Engine(models(model))
    reference = await reference_for(engine)
    features = len(reference.inputs)

    def verdicts(samples):
        live = LiveDrift(reference, features, engine.classes, 500, 0.25, 10)
        return live.update(feature_summary(samples), engine.infer(samples).scores)

    steady = verdicts(await synthetic(engine.sample_shape, 1, 2000))
    drifting = verdicts(await synthetic(engine.sample_shape, 1, 2000, drift=0.5))
    assert len(steady) == len(drifting) == 4
    assert all(v.compared and not v.alarm for v in steady), [v.max_psi for v in steady]
    assert all(v.alarm for v in drifting), [v.max_psi for v in drifting]
    assert max(v.max_psi for v in steady) < 0.1 < 1.0 < min(v.max_psi for v in drifting)
    assert all(v.window == 500 and sum(v.top1) == 500 for v in steady + drifting)


def test_without_reference_histograms_are_kept_but_not_compared():
    rng = np.random.default_rng(3)
    live = LiveDrift(None, 3, 2, 100, 0.25, 8)
    verdicts = live.update(rng.normal(size=(250, 3)), rng.dirichlet([1, 1], size=250))
    assert [v.window for v in verdicts] == [100, 100]
    assert all(not v.compared and not v.alarm for v in verdicts)
    assert all(sum(h) == 100 for v in verdicts for h in (*v.inputs, *v.outputs))
    same = evaluate(None, [np.ones(8)], [np.ones(8)], np.array([50, 50]), 0.0)
    assert not same.alarm


def write_meta(path, name, engine: Engine, reference: DriftReference):
    meta = ModelMeta(
        name=name,
        version=3,
        inputs=(engine.input,),
        outputs=(engine.output,),
        gate=GateRef(f"{name}/3.gate.json", "0" * 64, 1, 0.01),
        latency_budget_ms=50.0,
        drift=reference,
    )
    path.write_text(json.dumps(meta.to_json()))
    return path


@pytest.mark.slow
async def test_agent_reports_drift_alarm_from_release_reference(tmp_path, broker, models):
    engine = Engine(models("kws_f32_v1"))
    meta = write_meta(tmp_path / "meta.json", "kws", engine, await reference_for(engine))
    collector = Collector(broker.config.port)
    agents = {}
    for device, drift in (("steady", 0.0), ("drifting", 0.5)):
        tables = agent_config(
            tmp_path,
            broker,
            models("kws_f32_v1"),
            device=device,
            model={"meta": meta},
            source={"drift": drift},
            inference={"rate_hz": 1000.0},
            drift={"window": 300},
        )
        agents[device] = AgentProcess(write_config(tmp_path / f"{device}.toml", tables))
    for agent in agents.values():
        agent.wait_logged("agent_ready")

    def drift_of(device):
        status = collector.status(device)
        return status.drift if status and status.state == "online" and status.drift else None

    for device in agents:
        wait_for(lambda d=device: (info := drift_of(d)) and info.window == 300, 30, "drift")
    alarm = wait_for(lambda: collector.events("drift_alarm"), 10, "drift_alarm event")
    assert {e.device for e in alarm} == {"drifting"}
    assert drift_of("drifting").alarm and drift_of("drifting").compared
    assert not drift_of("steady").alarm and drift_of("steady").compared
    assert (
        collector.status("steady").model.name == "kws"
        and collector.status("steady").model.version == 3
    )

    def window_alarms():
        records = collector.records()
        return {(r.id.device, r.body.alarm) for r in records if r.body.kind == "drift"}

    wait_for(
        lambda: {("steady", False), ("drifting", True)} <= window_alarms(),
        10,
        "drift window records",
    )
    assert window_alarms() == {("steady", False), ("drifting", True)}
    for agent in agents.values():
        assert agent.terminate() == 0
    collector.close()


@pytest.mark.parametrize("model", ["kws_f32_v1", "kws_int8_v1"])
async def test_a_default_release_does_not_cry_wolf_on_a_stationary_source(models, model):
    """The reference as `release add` builds it with its defaults, the agent's default drift
    settings, 30 minutes of a stationary source at 10 Hz: no alarm; a shifted source alarms
    in its first window."""
    from agent.config import DriftConfig
    from gateway.releases.model_inspect import ReleaseOptions, build_model_meta, read_model

    meta = build_model_meta(read_model(models(model)), "kws", 1, ReleaseOptions()).meta
    engine, settings = Engine(models(model)), DriftConfig()

    def verdicts(samples):
        live = LiveDrift(
            meta.drift,
            len(meta.drift.inputs),
            engine.classes,
            settings.window,
            settings.psi_alarm,
            settings.bins,
        )
        return live.update(feature_summary(samples), engine.infer(samples).scores)

    steady = verdicts(await synthetic(engine.sample_shape, 1, 30 * 60 * 10))
    assert len(steady) == 36 and not any(v.alarm for v in steady), [v.max_psi for v in steady]
    shifted = verdicts(await synthetic(engine.sample_shape, 1, settings.window, drift=0.2))
    assert len(shifted) == 1 and shifted[0].alarm
