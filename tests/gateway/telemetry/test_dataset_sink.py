"""The gateway writing the Parquet dataset itself (``sink = "dataset"``): records from devices
land as rows DuckDB reads; a line the dataset cannot store is refused, a disk that fails is
retried; the ``[uplink]`` keys of both new sinks are checked when the file is read."""

from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pytest

from edgefleet.errors import UserError
from gateway import config
from gateway.telemetry.sinks import DatasetSink, Refused, SinkError
from gateway.telemetry.spool import Batch
from tests.gateway.support import Publisher, make_record, wait_for

GOOD = '[gateway]\nsite = "s1"\ndata_dir = "data"\n'


def rows(root: Path) -> tuple:
    if not list(root.rglob("*.parquet")):
        return (0, 0)
    source = f"read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    sql = f"SELECT count(*), count(DISTINCT (dev, boot, seq)) FROM {source}"
    return duckdb.sql(sql).fetchall()[0]


def test_device_records_become_dataset_rows(broker, make_gateway, tmp_path):
    root = tmp_path / "dataset"
    gateway = make_gateway(broker, None, uplink={"sink": "dataset", "dataset": str(root)})
    devices = [Publisher(broker, f"dev-{i}", batch=20, limit=200).start() for i in range(3)]
    published = {}
    for device in devices:
        wait_for(lambda d=device: d.done, 60, "the devices to publish")
        device.finish()
        published |= device.published
    wait_for(lambda: rows(root)[1] >= len(published), 60, "every record in the dataset")
    assert rows(root) == (len(published), len(published))
    assert gateway.stop() == 0


def _batch(*lines: bytes) -> Batch:
    data = b"".join(line + b"\n" for line in lines)
    return Batch(1, len(lines), len(lines), data, "9" * 40)


async def test_a_line_the_dataset_cannot_store_is_refused_and_a_bad_disk_retried(tmp_path):
    good = make_record("dev-1", "ab" * 8, 1)
    batch = _batch(good, b'{"dev": "dev-1"}')
    async with DatasetSink(str(tmp_path / "ds")) as sink:
        with pytest.raises(Refused, match="line 2: ") as caught:
            await sink.send(batch, gzip.compress(batch.body))
    assert caught.value.status == 422 and not (tmp_path / "ds").exists()
    (tmp_path / "file").write_text("not a directory")
    async with DatasetSink(str(tmp_path / "file" / "ds")) as sink:
        with pytest.raises(SinkError, match="disk"):
            await sink.send(_batch(good), b"")


def _load(tmp_path: Path, text: str):
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD + text)
    return config.load(path)


def test_the_new_sinks_read_their_keys(tmp_path):
    loaded = _load(tmp_path, '[uplink]\nsink = "dataset"\ndataset = "parquet"\n').uplink
    assert loaded.dataset == str(tmp_path / "parquet")
    uri = _load(tmp_path, '[uplink]\nsink = "dataset"\ndataset = "s3://b/p"\n').uplink
    assert uri.dataset == "s3://b/p"
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    text = (
        '[uplink]\nsink = "mqtt"\nhost = "iot.example"\ncert_file = "c.pem"\nkey_file = "k.pem"\n'
    )
    mqtt = _load(tmp_path, text).uplink
    assert (mqtt.host, mqtt.port, mqtt.topic, mqtt.cert_file) == (
        "iot.example", 8883, None, tmp_path / "c.pem"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('sink = "dataset"\n', "uplink.dataset"),
        ('dataset = "x"\n', "uplink.dataset"),
        ('sink = "mqtt"\n', "uplink.host"),
        ('sink = "mqtt"\nhost = "h"\ntopic = "a/#"\n', "uplink.topic"),
        ('sink = "mqtt"\nhost = "h"\nport = 0\n', "uplink.port"),
        ('sink = "mqtt"\nhost = "h"\ncert_file = "nowhere.pem"\n', "uplink.cert_file"),
        ('host = "h"\n', "uplink.host"),
    ],
)
def test_bad_sink_keys_name_the_key(tmp_path, extra, key):
    with pytest.raises(UserError, match=f"key {key}:"):
        _load(tmp_path, "[uplink]\n" + extra)
