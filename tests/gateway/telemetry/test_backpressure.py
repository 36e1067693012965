"""The gateway's memory stays bounded when the database is slower than the broker: mosquitto
2.0.11 sends past the Receive Maximum once PUBACKs flow, so the gateway enforces it itself."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edgefleet.tomlconfig import dumps as toml
from gateway import config, daemon
from gateway.telemetry.ingest import Ingest
from protocol.telemetry import encode_batch
from tests.conftest import GATEWAY_USER
from tests.gateway.support import PREFIX, make_record

LIMIT = 5


async def test_inbox_never_exceeds_receive_maximum_with_a_slow_disk(
    broker, tmp_path: Path, monkeypatch
):
    persist = Ingest._persist_sync

    def slow(self, conn, group):
        time.sleep(0.05)
        return persist(self, conn, group)

    monkeypatch.setattr(Ingest, "_persist_sync", slow)
    path = tmp_path / "gateway.toml"
    path.write_text(
        toml(
            {
                "gateway": {"site": "site1", "data_dir": tmp_path / "data"},
                "mqtt": {
                    "url": broker.url,
                    "username": GATEWAY_USER[0],
                    "password": GATEWAY_USER[1],
                    "receive_maximum": LIMIT,
                },
                "metrics": {"listen": ""},
            }
        )
    )
    task = asyncio.create_task(daemon.run(config.load(path)))
    try:
        # The daemon builds its Ingest inside: found by polling the heap.
        while not (ingests := [o for o in gc.get_objects() if isinstance(o, Ingest)]):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        ingest = ingests[0]
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1")
        device.username_pw_set(*broker.login("dev-1"))
        device.connect("127.0.0.1", broker.config.port)
        device.loop_start()
        payload = encode_batch("dev-1", [make_record("dev-1", "00aa00aa00aa00aa", 0)])
        infos = [
            device.publish(f"{PREFIX}/dev/dev-1/telemetry", payload, qos=1) for _ in range(200)
        ]

        def spooled() -> float:
            return ingest.metrics.registry.get_sample_value(
                "edgefleet_gateway_ingest_records_total"
            )

        deepest = 0
        deadline = time.monotonic() + 60
        while spooled() < 200 and time.monotonic() < deadline:
            deepest = max(deepest, len(ingest._inbox))
            await asyncio.sleep(0.002)
        assert all(info.is_published() for info in infos)
        assert spooled() == 200
        assert 0 < deepest <= LIMIT
        device.disconnect()
        device.loop_stop()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
