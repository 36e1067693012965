"""Config errors name the file and the key; replay sources read NPY, CSV and JSONL and count
rows that do not parse; the link's pure decisions (backoff, batching)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.bad_input import BadInput
from agent.config import load
from agent.link import batch_due
from agent.sources import Pacer, ReplaySource, SourceError
from edgefleet.backoff import backoff_delay
from edgefleet.errors import UserError

BASE = {
    "device": 'id = "d1"\nsite = "s1"',
    "mqtt": 'url = "mqtts://user:p%40ss@broker.local"',
    "state": 'dir = "state"',
    "model": 'path = "model.tflite"',
}


def config_file(tmp_path: Path, **tables: str) -> Path:
    merged = {**BASE, **tables}
    text = "\n".join(f"[{name}]\n{body}" for name, body in merged.items() if body is not None)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_good_config(tmp_path):
    config = load(config_file(tmp_path))
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("broker.local", 8883, True)
    assert (config.mqtt.username, config.mqtt.password) == ("user", "p@ss")
    assert config.mqtt.prefix == "edgefleet/s1"
    assert config.state_dir == tmp_path / "state"
    assert config.model.path == tmp_path / "model.tflite"
    assert config.source.kind == "synthetic" and config.telemetry.spool_bytes > 0


def test_capture_is_off_unless_enabled(tmp_path):
    config = load(config_file(tmp_path))
    assert not config.capture.enabled
    assert (config.capture.spool_bytes, config.capture.max_per_hour) == (8 << 20, 600)
    assert config.capture.max_campaigns == 4 and config.source.pattern == "noise"
    capture = "enabled = true\nspool_bytes = 1048576\nmax_per_hour = 10\nmax_campaigns = 2"
    source = 'pattern = "bands"\nshift = -1\nshift_file = "shift"'
    config = load(config_file(tmp_path, capture=capture, source=source))
    assert config.capture.enabled and config.capture.spool_bytes == 1 << 20
    assert (config.capture.max_per_hour, config.capture.max_campaigns) == (10, 2)
    assert (config.source.pattern, config.source.shift) == ("bands", -1.0)
    assert config.source.shift_file == tmp_path / "shift"


def test_update_limits_and_allowed_models(tmp_path):
    (tmp_path / "root.json").write_text("{}")
    update = 'trusted_root = "root.json"'
    config = load(config_file(tmp_path, update=update))
    assert config.update.allowed_models == ()  # the name of the model the device runs
    assert config.update.max_model_bytes == 64 * 1024 * 1024
    update += '\nallowed_models = ["kws", "other", "kws"]\nmax_model_bytes = 1048576'
    config = load(config_file(tmp_path, update=update))
    assert config.update.allowed_models == ("kws", "other")
    assert config.update.max_model_bytes == 1 << 20


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"mqtt": 'url = "tcp://x"'}, "key mqtt.url: must start with mqtt:// or mqtts://"),
        ({"mqtt": 'url = "mqtt://x:99999"'}, "key mqtt.url: has a bad port"),
        ({"mqtt": 'url = "mqtt://x"\nca_file = "ca.pem"'}, "key mqtt.ca_file: no such file"),
        ({"mqtt": 'url = "mqtt://x"\nca = "a"\nca_file = "b"'}, "mqtt.ca: is the old name of"),
        ({"mqtt": 'url = "mqtt://x"\nprefix = "a//b"'}, "mqtt.prefix: must not start or end"),
        ({"device": 'id = "a/b"\nsite = "s"'}, "key device.id: must match"),
        ({"device": 'site = "s"'}, "key device.id: is required"),
        (
            {"device": 'id = "a"\nsite = "s"\nhardware_tags = ["npu", "../x"]'},
            "key device.hardware_tags: must be at most 32 names",
        ),
        ({"device": 'id = "a"\nsite = "s"\narena_bytes = -1'}, "key device.arena_bytes: must be"),
        ({"state": None}, "key state.dir: is required"),
        ({"telemetry": "spool_bytes = 10"}, "key telemetry.spool_bytes: must be >= 4096"),
        ({"telemetry": 'batch_records = "many"'}, "key telemetry.batch_records: must be a int"),
        ({"inference": "rate_hz = -1"}, "key inference.rate_hz: must be >= 0.0"),
        ({"source": 'kind = "camera"'}, "key source.kind: must be one of"),
        ({"source": 'kind = "serial"'}, "key source.port: is required"),
        ({"source": 'kind = "replay"\npath = "nope.npy"'}, "key source.path: no such file"),
        ({"drift": "psi = 1"}, "key drift.psi: unknown key"),
        ({"model": 'path = "m.tflite"\nengine = "onnx"'}, "key model.engine: must be one of"),
        ({"extra": "a = 1"}, "key extra: unknown key"),
        ({"capture": 'enabled = "yes"'}, "key capture.enabled: must be a bool"),
        ({"capture": "spool_bytes = 100"}, "key capture.spool_bytes: must be >= 65536"),
        ({"capture": "max_per_hour = -1"}, "key capture.max_per_hour: must be >= 0"),
        ({"capture": "max_campaigns = 0"}, "key capture.max_campaigns: must be >= 1"),
        ({"capture": "max_samples = 3"}, "key capture.max_samples: unknown key"),
        ({"source": 'pattern = "stripes"'}, "key source.pattern: must be one of"),
        (
            {"update": 'trusted_root = "root.json"\nallowed_models = []'},
            "key update.allowed_models: must be a non-empty list of model names",
        ),
        (
            {"update": 'trusted_root = "root.json"\nallowed_models = ["kws", "a/b"]'},
            "key update.allowed_models: must be a non-empty list of model names",
        ),
        (
            {"update": 'trusted_root = "root.json"\nmax_model_bytes = 3000000000'},
            "key update.max_model_bytes: must be <=",
        ),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, tables, message):
    (tmp_path / "root.json").write_text("{}")
    path = config_file(tmp_path, **tables)
    with pytest.raises(UserError) as error:
        load(path)
    assert str(error.value).startswith(f"config {path}: key ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\n")
    with pytest.raises(UserError, match=f"config {bad}: not valid TOML"):
        load(bad)


async def collect(source, limit=10_000):
    out = []
    async with source:
        async for chunk in source:
            out.append(chunk.samples)
            if sum(len(c) for c in out) >= limit:
                break
    return np.concatenate(out) if out else np.empty((0,))


def replay(tmp_path, name, loop=False):
    from agent.config import SourceConfig

    return SourceConfig(kind="replay", path=tmp_path / name, loop=loop)


async def test_replay_formats_and_bad_rows(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    rows = [",".join(map(str, s.ravel())) for s in data]
    (tmp_path / "x.csv").write_text("\n".join(["a,b,c,d,e,f", *rows[:3], "1,2", *rows[3:]]))
    lines = [json.dumps(s.tolist()) for s in data[:4]] + ["{nope", json.dumps({"input": [1] * 5})]
    lines += [json.dumps({"input": s.ravel().tolist()}) for s in data[4:]]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")

    for name, bad, chunk in (("x.npy", 0, 3), ("x.npy", 0, 7), ("x.csv", 2, 3), ("x.jsonl", 2, 7)):
        bad_input = BadInput()
        source = ReplaySource(replay(tmp_path, name), (2, 3), 0.0, chunk, bad_input)
        out = await collect(source)
        assert np.allclose(out, data, atol=1e-6), name
        assert bad_input.counts["bad_sensor"] == bad, name

    looping = ReplaySource(replay(tmp_path, "x.npy", loop=True), (2, 3), 0.0, 4, BadInput())
    again = await collect(looping, limit=20)
    assert np.array_equal(again[:20], np.concatenate([data, data, data])[:20])


def test_replay_of_the_wrong_shape_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(SourceError, match="needs"):
        ReplaySource(replay(tmp_path, "x.npy"), (2, 3), 0.0, 3, BadInput())


def test_backoff_is_full_jitter_capped_exponential():
    assert backoff_delay(0, 0.5, 30, lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, lambda: 1.0) == 4.0
    assert backoff_delay(10, 0.5, 30, lambda: 1.0) == 30
    assert backoff_delay(10_000, 0.5, 30, lambda: 0.5) == 15
    assert backoff_delay(5, 0.5, 30, lambda: 0.0) == 0.0


def test_batch_due():
    assert batch_due(100, 100, None, 1.0)
    assert not batch_due(99, 100, 0.5, 1.0)
    assert batch_due(1, 100, 1.0, 1.0)
    assert not batch_due(0, 100, 5.0, 1.0)


async def test_pacer_counts_due_samples():
    pacer = Pacer(0.0, 16)
    assert await pacer.next() == 16
    paced = Pacer(1000.0, 5)
    assert 1 <= await paced.next() <= 5


def test_model_metadata_that_does_not_parse(tmp_path):
    (tmp_path / "meta.json").write_text('{"format": 1, "name": "kws"}')
    path = config_file(tmp_path, model='path = "m.tflite"\nmeta = "meta.json"')
    with pytest.raises(UserError, match=r"key model\.meta: .*meta\.json: bad model metadata"):
        load(path)
