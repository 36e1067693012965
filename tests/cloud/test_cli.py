"""``edgefleet cloud``: a real gateway uploads over HTTPS to a real ``cloud serve`` process, a
batch sent again is not stored twice, SIGTERM ends the server cleanly; ``dataset list`` and
``dataset export`` read the files back through DuckDB and write what a training script loads."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import subprocess
from pathlib import Path

import duckdb
import numpy as np

from edgefleet.cli import main
from gateway.config import UplinkConfig
from gateway.telemetry.sinks import HttpSink
from gateway.telemetry.spool import Batch
from protocol import dataset
from tests.cloud.records import body, inference, sample
from tests.gateway.support import EDGEFLEET, Publisher, make_record, wait_for
from tests.support.pki import TestCA


def count(root: Path, sql: str = "count(*), count(DISTINCT (dev, boot, seq))") -> tuple:
    if not list(root.rglob("*.parquet")):
        return (0, 0)
    source = f"read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    return duckdb.sql(f"SELECT {sql} FROM {source}").fetchall()[0]


def test_a_gateway_uploads_to_cloud_serve_and_a_batch_sent_again_is_stored_once(
    broker, make_gateway, tmp_path
):
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost", server=True)
    token, root = tmp_path / "token", tmp_path / "dataset"
    token.write_text("a-long-random-token\n")
    log = (tmp_path / "cloud.log").open("wb")
    proc = subprocess.Popen(
        [str(EDGEFLEET), "cloud", "serve", "--dataset", str(root), "--listen", "127.0.0.1:0",
         "--token-file", str(token), "--tls-cert", str(server.cert), "--tls-key", str(server.key)],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:") and url.endswith("/ingest"), url
        uplink = {"ca_file": ca.ca.cert, "token_file": token}
        gateway = make_gateway(broker, url, uplink=uplink)
        devices = [Publisher(broker, f"dev-{i}", batch=25, limit=300).start() for i in range(2)]
        published = {}
        for device in devices:
            wait_for(lambda d=device: d.done, 60, "the devices to publish")
            device.finish()
            published |= device.published
        wait_for(lambda: count(root)[1] >= len(published), 60, "every record in the dataset")
        assert count(root) == (len(published), len(published))
        assert count(root, "count(DISTINCT dev), min(stream), max(label)") == (2, "telemetry", None)
        assert gateway.stop() == 0

        lines = b"".join(make_record("dev-9", "ab" * 8, s) + b"\n" for s in range(10))
        batch = Batch(1, 10, 10, lines, "d" * 40)
        config = UplinkConfig(sink="http", url=url, ca_file=ca.ca.cert, token_file=token)

        async def send_twice() -> None:
            async with HttpSink(config, "site1") as sink:
                for _ in range(2):
                    await sink.send(batch, gzip.compress(lines))

        asyncio.run(send_twice())
        assert count(root, "count(*)") == (len(published) + 10,)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log.close()
    assert "cloud_stopped" in (tmp_path / "cloud.log").read_text()


def _samples(root: Path) -> None:
    rows = dataset.parse_body(body(*(sample(i) for i in range(6)), inference(50)))
    dataset.write_batch(root, "e" * 40, rows)
    again = dataset.parse_body(body(sample(3), sample(7, version=3, campaign="other")))
    dataset.write_batch(root, "f" * 40, again)  # sample 3 a second time, under another key


def test_list_and_export_npz_for_training(tmp_path, capsys):
    root = tmp_path / "dataset"
    _samples(root)
    assert main(["cloud", "dataset", "list", "--dataset", str(root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["partitions"]
    assert [(p["stream"], p["version"], p["rows"]) for p in listed] == [
        ("samples", 2, 7), ("samples", 3, 1), ("telemetry", 2, 1),
    ]  # fmt: skip
    assert all(p["day"] == "2023-11-14" and p["bytes"] > 0 for p in listed)

    out = tmp_path / "train.npz"
    argv = ["cloud", "dataset", "export", "--dataset", str(root), "--stream", "samples",
            "--model", "kws", "--version", "2", "--format", "npz", "--out", str(out),
            "--json"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    loaded = np.load(out)
    assert loaded["inputs"].shape == (6, 3, 4) and loaded["inputs"].dtype == np.float32
    assert np.array_equal(loaded["inputs"][2], np.arange(12, dtype=np.float32).reshape(3, 4) + 2)
    assert loaded["labels"].tolist() == [-1] * 6 and loaded["scores"].shape == (6, 4)
    assert loaded["ids"][0] == "cam-1:0123abcd0123abcd:0"
    on_disk = json.loads(out.with_name("train.npz.manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["rows"] == 6 and manifest["input"] == {"dtype": "float32", "shape": [3, 4]}
    assert manifest["classes"] == [0, 1, 2, 3] and manifest["files"] == ["train.npz"]
    assert manifest["models"] == [{"model": "kws", "version": 2, "rows": 6}]
    assert manifest["filters"]["version"] == 2


def test_export_parquet_is_one_file_and_mixed_shapes_are_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / "dataset"
    _samples(root)
    extra = dataset.parse_body(body(sample(9, np.zeros(5, np.int8))))
    dataset.write_batch(root, "1" * 40, extra)
    out = tmp_path / "all.parquet"
    argv = ["cloud", "dataset", "export", "--dataset", str(root), "--stream", "samples",
            "--format", "parquet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    [(rows, ids, streams)] = duckdb.sql(
        f"SELECT count(*), count(DISTINCT seq), count(DISTINCT stream) FROM '{out}'"
    ).fetchall()
    assert (rows, ids, streams) == (8, 8, 1)  # sample 3 once, though stored twice
    assert json.loads((tmp_path / "all.parquet.manifest.json").read_text())["input"] is None

    npz = [*argv[:-4], "--format", "npz", "--out", str(tmp_path / "x.npz")]
    assert main(npz) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input shapes" in err[0] and "--model/--version" in err[0], err
    assert not (tmp_path / "x.npz").exists()
