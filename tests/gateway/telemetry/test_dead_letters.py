"""Poison messages through a real mosquitto to a live gateway: the gateway acknowledges them,
counts them by reason, keeps them as dead letters and goes on; restarted (same client id, or a
new one that gets the retained status again) it stays up instead of dying at every redelivery."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt

from protocol.telemetry import encode_batch
from protocol.topics import DriftInfo, Status, device_topic
from tests.gateway.support import PREFIX, make_record, wait_for

BOOT = "00112233445566aa"
KIND_LIST = "edgefleet_gateway_ingest_malformed_total{kind=telemetry,reason=type}"
HUGE_PSI = "edgefleet_gateway_ingest_malformed_total{kind=status,reason=range}"


def poison_telemetry(device: str) -> bytes:
    """A batch whose one record has ``"kind": []``."""
    record = json.loads(make_record(device, BOOT, 0))
    record["kind"] = []
    return encode_batch(device, [json.dumps(record, separators=(",", ":")).encode()])


def poison_status(device: str) -> bytes:
    """A status whose ``drift.max_psi`` is a 400-digit integer."""
    status = Status(device, "online", 1, drift=DriftInfo(50, 0.5, False, True)).encode()
    return status.replace(b'"max_psi":0.5', b'"max_psi":' + b"9" * 400)


def _device(broker, device: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    client.username_pw_set(*broker.login(device))
    client.connect("127.0.0.1", broker.config.port)
    client.loop_start()
    return client


def _publish(client, device: str, kind: str, payload: bytes, retain: bool = False) -> None:
    topic = device_topic(PREFIX, device, kind)
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def _letters(gateway) -> list[dict]:
    result = gateway.cli("dead-letters", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["dead_letters"]


def _stays_up(gateway, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert gateway.proc.poll() is None, f"the gateway died:\n{gateway.log()}"
        time.sleep(0.1)


def test_poison_messages_become_dead_letters_and_the_gateway_stays_up(broker, make_gateway):
    gateway = make_gateway(broker, None)
    device = _device(broker, "cam-1")
    _publish(device, "cam-1", "telemetry", poison_telemetry("cam-1"))
    _publish(device, "cam-1", "status", poison_status("cam-1"), retain=True)
    good = [make_record("cam-1", BOOT, s) for s in range(1, 6)]
    _publish(device, "cam-1", "telemetry", encode_batch("cam-1", good))

    wait_for(lambda: gateway.metric(KIND_LIST) == 1, 20, "the poison batch counted")
    wait_for(lambda: gateway.metric(HUGE_PSI) == 1, 20, "the poison status counted")
    wait_for(
        lambda: gateway.metric("edgefleet_gateway_ingest_records_total") == 5, 20, "good records"
    )
    _stays_up(gateway, 1.0)

    letters = _letters(gateway)
    assert [(e["source"], e["kind"], e["reason"]) for e in letters] == [
        ("mqtt", "telemetry", "type"),
        ("mqtt", "status", "range"),
    ]
    assert "kind" in letters[0]["detail"] and "400 digits" in letters[1]["detail"]
    assert letters[1]["topic"] == device_topic(PREFIX, "cam-1", "status")
    assert letters[1]["size"] == len(poison_status("cam-1"))
    table = gateway.cli("dead-letters")
    assert table.returncode == 0 and "integer of 400 digits" in table.stdout, table.stdout

    # Killed and started again: nothing is redelivered (both were acknowledged) but the retained
    # status comes again with the subscription; it is a dead letter again, not a crash.
    gateway.kill()
    gateway.start()
    wait_for(lambda: gateway.metric(HUGE_PSI) == 1, 20, "the retained poison counted again")
    _stays_up(gateway)
    assert gateway.metric(KIND_LIST) is None  # acknowledged before: not sent again
    assert len(_letters(gateway)) == 3

    # A gateway with a new client id gets the retained poison too, and stays up.
    fresh = make_gateway(broker, None, name="gw-new")
    wait_for(lambda: fresh.metric(HUGE_PSI) == 1, 20, "the new gateway counting the status")
    _stays_up(fresh)
    assert fresh.stop() == 0
    assert gateway.stop() == 0
    device.disconnect()
    device.loop_stop()
