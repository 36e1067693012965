"""The spool cap: when the cloud is away and the spool is full, the oldest records go first and
every one of them is counted; the rest still reach the cloud."""

from __future__ import annotations

from pathlib import Path

from gateway.store import Store, transaction
from gateway.telemetry.sinks import retry_after
from gateway.telemetry.spool import SpoolRow, UplinkSpool, rows_to_drop
from tests.gateway.support import Publisher, make_record, wait_for

CAP = 1024 * 1024


def test_rows_to_drop_frees_at_least_the_excess_oldest_first():
    assert rows_to_drop([10, 10, 10], 0) == 0
    assert rows_to_drop([10, 10, 10], 1) == 1
    assert rows_to_drop([10, 10, 10], 11) == 2
    assert rows_to_drop([10, 10, 10], 100) == 3


async def test_spool_drops_oldest_rows_counts_them_and_keeps_the_count(tmp_path: Path):
    row = SpoolRow(4, b"\n".join([b"x" * 99] * 4))  # 399 bytes
    async with Store(tmp_path / "db") as store:
        spool = await UplinkSpool(store, max_bytes=4000).open()
        for _ in range(10):
            await store.run(lambda c: transaction(c, lambda: spool.append_sync(c, [row])))
        assert spool.stats.dropped == 0
        leased = await spool.lease(8, 10_000)  # rows 1..2, in flight
        assert (leased.first, leased.last, leased.records) == (1, 2, 8)
        dropped = await store.run(
            lambda c: transaction(c, lambda: spool.append_sync(c, [row, row, row]))
        )
        assert dropped == 12  # rows 1..3: the leased ones too, because they are the oldest
        assert (spool.stats.rows, spool.stats.records, spool.stats.dropped) == (10, 40, 12)
        assert await spool.reread(leased) is None
        ids = await store.run(lambda c: [r[0] for r in c.execute("SELECT id FROM records")])
        assert ids == list(range(4, 14))
    async with Store(tmp_path / "db") as store:
        spool = await UplinkSpool(store, max_bytes=4000).open()
        assert (spool.stats.records, spool.stats.dropped) == (40, 12)


def test_full_spool_drops_oldest_first_with_an_exact_count(broker, cloud, make_gateway):
    cloud.mode = "500"
    gateway = make_gateway(broker, cloud.url, spool={"max_bytes": CAP})
    device = Publisher(broker, "dev-0", batch=100, interval=0, limit=8000).start()
    wait_for(lambda: device.done, 60, "the device to publish")
    device.finish()
    wait_for(lambda: gateway.metric("edgefleet_gateway_ingest_records_total") == 8000, 30, "ingest")
    dropped = int(gateway.metric("edgefleet_gateway_spool_dropped_records_total"))
    record_bytes = len(make_record("dev-0", device.boot, 5000))
    assert 8000 - CAP // record_bytes <= dropped < 8000 - CAP // (record_bytes + 1) + 200
    assert gateway.metric("edgefleet_gateway_spool_bytes") <= CAP

    cloud.mode = "ok"
    wait_for(lambda: gateway.metric("edgefleet_gateway_spool_records") == 0, 30, "spool empty")
    newest = {key for key in device.published if key[2] >= dropped}
    assert cloud.unique() == newest
    assert gateway.metric("edgefleet_gateway_spool_dropped_records_total") == dropped


async def test_a_batch_keeps_its_idempotency_key_across_a_restart(tmp_path: Path):
    rows = [SpoolRow(2, b'{"a":1}\n{"a":2}'), SpoolRow(1, b'{"a":3}')]
    async with Store(tmp_path / "db") as store:
        spool = await UplinkSpool(store, max_bytes=CAP).open()
        await store.run(lambda c: transaction(c, lambda: spool.append_sync(c, rows)))
        first = await spool.lease(100, 10_000)
        assert first.body == b'{"a":1}\n{"a":2}\n{"a":3}\n' and first.records == 3
        assert await spool.lease(100, 10_000) is None  # leased rows are not handed out twice
    async with Store(tmp_path / "db") as store:
        spool = await UplinkSpool(store, max_bytes=CAP).open()
        again = await spool.lease(100, 10_000)
        assert (again.key, again.body) == (first.key, first.body)
        await spool.remove(again)
        assert (spool.stats.records, spool.stats.bytes) == (0, 0)
    async with Store(tmp_path / "db") as store:
        assert (await UplinkSpool(store, max_bytes=CAP).open()).stats.records == 0


def test_retry_after_takes_seconds_and_ignores_dates():
    assert retry_after("7") == 7.0
    assert retry_after(None) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after("999999") == 3600.0
