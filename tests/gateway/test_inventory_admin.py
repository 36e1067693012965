"""Inventory from retained status and events, `edgefleet gateway devices`, the admin API's token,
malformed messages, the local-directory sink and a clean SIGTERM, against a real broker."""

from __future__ import annotations

import gzip
import json
import re
import socket

import aiohttp
import paho.mqtt.client as mqtt

from protocol.telemetry import encode_batch
from protocol.topics import DriftInfo, Event, ModelInfo, SpoolInfo, Status, device_topic
from tests.gateway.support import PREFIX, make_record, wait_for

BOOT = "00112233445566aa"


def _device(broker, device: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    client.username_pw_set(*broker.login(device))
    client.will_set(
        device_topic(PREFIX, device, "status"), Status.offline(device).encode(), 1, True
    )
    client.connect("127.0.0.1", broker.config.port)
    client.loop_start()
    return client


def _publish(client: mqtt.Client, device: str, kind: str, payload: bytes, retain=False) -> None:
    client.publish(
        device_topic(PREFIX, device, kind), payload, qos=1, retain=retain
    ).wait_for_publish(10)


def _devices(gateway) -> dict[str, dict]:
    result = gateway.cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    return {d["device"]: d for d in json.loads(result.stdout)}


async def test_inventory_cli_admin_token_and_dir_sink(broker, make_gateway):
    gateway = make_gateway(broker, None)
    cam = _device(broker, "cam-1")
    status = Status(
        device="cam-1",
        state="online",
        ts_ms=1,
        agent_version="0.1.0",
        model=ModelInfo("kws", 2, "a" * 64),
        health="ok",
        update_state="IDLE",
        drift=DriftInfo(50, 0.05, False, True),
        spool=SpoolInfo(3, 900, 10_000, 4, 40),
    )
    _publish(cam, "cam-1", "status", status.encode(), retain=True)
    _publish(cam, "cam-1", "events", Event("cam-1", 2, "drift_alarm", {"psi": 0.4}).encode())
    records = [make_record("cam-1", BOOT, s) for s in range(10)]
    _publish(cam, "cam-1", "telemetry", encode_batch("cam-1", records))
    _publish(cam, "cam-1", "telemetry", b"\x00garbage")
    spoofed = encode_batch("cam-2", [make_record("cam-2", BOOT, 0)])
    _publish(cam, "cam-1", "telemetry", spoofed)

    pump = _device(broker, "pump-7")
    _publish(pump, "pump-7", "status", Status("pump-7", "online", 1).encode(), retain=True)
    wait_for(lambda: _devices(gateway).get("pump-7", {}).get("state") == "online", 20, "pump-7")
    pump.socket().shutdown(socket.SHUT_RDWR)  # dies without DISCONNECT: the broker sends the will

    wait_for(lambda: _devices(gateway)["pump-7"]["state"] == "offline", 20, "the last will")
    wait_for(lambda: _devices(gateway)["cam-1"]["records"] == 10, 20, "cam-1's telemetry")
    cam_row = _devices(gateway)["cam-1"]
    assert cam_row["state"] == "online"
    assert (cam_row["model"], cam_row["model_version"], cam_row["agent_version"]) == (
        "kws",
        2,
        "0.1.0",
    )
    assert (cam_row["drift_alarm"], cam_row["drift_alarms"]) == (True, 1)
    assert (cam_row["spool_depth"], cam_row["spool_dropped"], cam_row["health"]) == (3, 4, "ok")

    summary = json.loads(gateway.cli("status", "--json").stdout)
    assert (summary["devices"], summary["devices_online"], summary["spool"]["dropped"]) == (2, 1, 0)

    table = gateway.cli("devices")
    assert table.returncode == 0 and "cam-1" in table.stdout and "pump-7" in table.stdout

    wait_for(
        lambda: (
            gateway.metric("edgefleet_gateway_ingest_malformed_total{kind=telemetry,reason=type}")
            == 1
            and gateway.metric(
                "edgefleet_gateway_ingest_malformed_total{kind=telemetry,reason=device_mismatch}"
            )
            == 1
        ),
        10,
        "malformed counted",
    )
    assert gateway.metric("edgefleet_gateway_devices_online") == 1

    outbox = gateway.config["gateway"]["data_dir"] / "outbox"
    wait_for(lambda: list(outbox.glob("*.ndjson.gz")), 20, "a batch in the outbox")
    lines = b"".join(gzip.decompress(p.read_bytes()) for p in outbox.glob("*.ndjson.gz"))
    assert lines.splitlines() == records

    sock = str(gateway.workdir / "admin.sock")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session:
        async with session.get("http://localhost/v1/devices") as response:
            assert response.status == 401
        bad = {"Authorization": "Bearer wrong"}
        async with session.get("http://localhost/v1/status", headers=bad) as response:
            assert response.status == 401

    assert gateway.stop() == 0
    # Off a terminal every line of the daemon's stderr is a JSON object named in snake_case.
    lines = [json.loads(line) for line in gateway.log_path().read_text().splitlines()]
    assert {"gateway_running", "mqtt_connected", "gateway_stopping"} <= {x["event"] for x in lines}
    assert all(re.fullmatch(r"[a-z][a-z0-9_.]*", x["event"]) for x in lines if "logger" not in x)
    cam.disconnect()
    cam.loop_stop()
    pump.loop_stop()
    down = gateway.cli("devices")
    assert down.returncode == 2 and "is it running" in down.stderr


def test_ingest_over_mqtts_with_client_certificates(make_broker, make_gateway):
    broker = make_broker(tls=True)
    ca = broker.ca
    gateway_cert = ca.issue("gateway")
    tls = {"ca_file": ca.ca.cert, "cert_file": gateway_cert.cert, "key_file": gateway_cert.key}
    gateway = make_gateway(broker, None, mqtt=tls)
    device_cert = ca.issue("cam-9")
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-9")
    device.tls_set(str(ca.ca.cert), str(device_cert.cert), str(device_cert.key))
    device.connect("127.0.0.1", broker.config.port)
    device.loop_start()
    records = [make_record("cam-9", BOOT, s) for s in range(5)]
    _publish(device, "cam-9", "telemetry", encode_batch("cam-9", records))
    wait_for(lambda: _devices(gateway).get("cam-9", {}).get("records") == 5, 20, "cam-9's records")
    device.disconnect()
    device.loop_stop()
