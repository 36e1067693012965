"""The receiver on a real loopback socket: a batch is stored once however often it is sent, and
every hostile request gets its status with nothing written."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import aiohttp
import duckdb
import pytest
from aiohttp import web

from cloud.receiver import Receiver, ReceiverConfig
from tests.cloud.records import body, inference, sample

TOKEN = "s3cret-token"
KEY = "0" * 39 + "1"


@pytest.fixture
async def receiver(tmp_path: Path):
    config = ReceiverConfig(str(tmp_path / "dataset"), TOKEN, 1024 * 1024, 256 * 1024)
    runner = web.AppRunner(Receiver(config).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session, url, tmp_path / "dataset"
    await runner.cleanup()


def headers(key: str = KEY, token: str = TOKEN, **extra) -> dict:
    return {
        "Authorization": f"Bearer {token}",
        "Idempotency-Key": key,
        "Content-Encoding": "gzip",
        "Content-Type": "application/x-ndjson",
    } | extra


def stored(root: Path) -> list[tuple]:
    if not list(root.rglob("*.parquet")):
        return []
    source = f"read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    return duckdb.sql(f"SELECT dev, seq, stream FROM {source} ORDER BY seq").fetchall()


async def post(session, url, data: bytes, **kwargs):
    async with session.post(f"{url}/ingest", data=data, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def test_a_batch_is_stored_once_however_often_it_is_sent(receiver):
    session, url, root = receiver
    data = gzip.compress(body(sample(1), inference(2), sample(3)))
    for _ in range(3):
        assert await post(session, url, data, headers=headers()) == (200, {"accepted": 3})
    assert stored(root) == [
        ("cam-1", 1, "samples"), ("cam-1", 2, "telemetry"), ("cam-1", 3, "samples")
    ]  # fmt: skip
    async with session.get(f"{url}/healthz") as response:
        assert response.status == 200


BIG = gzip.compress(b"x" * (2 * 1024 * 1024))  # inflates past the 1 MiB cap


@pytest.mark.parametrize(
    ("data", "hdrs", "status", "says"),
    [
        (gzip.compress(body(sample(1))), headers(token="wrong"), 401, "bearer token"),
        (gzip.compress(body(sample(1))), headers() | {"Authorization": "Basic x"}, 401, "token"),
        (gzip.compress(body(sample(1))), headers(key="A" * 40), 400, "Idempotency-Key"),
        (gzip.compress(body(sample(1))), headers(key="../x"), 400, "Idempotency-Key"),
        (body(sample(1)), headers(**{"Content-Encoding": "identity"}), 400, "gzip"),
        (b"\x1f\x8b\x08\x00garbage" * 10, headers(), 400, "not valid gzip"),
        (BIG, headers(), 413, "inflated body exceeds"),
        (zlib.compress(b"\x00" * 300 * 1024)[:10] + bytes(300 * 1024), headers(), 413, "exceeds"),
        (gzip.compress(body(sample(1), {"dev": "x"})), headers(), 422, "line 2: "),
        (gzip.compress(b"\n"), headers(), 422, "line 1: "),
    ],
)
async def test_a_hostile_request_gets_its_status_and_writes_nothing(
    receiver, data, hdrs, status, says
):
    session, url, root = receiver
    got, answer = await post(session, url, data, headers=hdrs)
    assert got == status and says in answer["error"], answer
    if status == 422:
        assert answer["line"] == int(says.split()[1].rstrip(":"))
    assert stored(root) == []
