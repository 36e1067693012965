"""MQTT packet size on a real mosquitto: the gateway's own Maximum Packet Size makes the broker
drop an oversize message for it instead of delivering it (even a broker without a limit of its
own), so the gateway's memory does not grow by the message's size; and the site broker the
project configures refuses such a message from the device in the first place."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from firmware_sim import broker as broker_module
from protocol.telemetry import MAX_BATCH_BYTES, MAX_PACKET_BYTES, batch_overhead, encode_batch
from protocol.topics import device_topic
from tests.gateway.support import PREFIX, make_record, wait_for

BOOT = "00112233445566aa"
HUGE = 64 * 1024 * 1024
RECORDS = "edgefleet_gateway_ingest_records_total"


def rss(pid: int, field: str = "VmHWM") -> int:
    """Resident set size in bytes from /proc: ``VmHWM`` is its peak so far, ``VmRSS`` now (a
    buffer freed after use leaves VmRSS, not the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _client(broker, device: str) -> tuple[mqtt.Client, threading.Event]:
    gone = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
    client.username_pw_set(*broker.login(device))
    client.on_disconnect = lambda *a: gone.set()
    client.connect("127.0.0.1", broker.config.port)
    client.loop_start()
    return client, gone


def _good(client: mqtt.Client, device: str, first: int, count: int) -> None:
    records = [make_record(device, BOOT, s) for s in range(first, first + count)]
    topic = device_topic(PREFIX, device, "telemetry")
    client.publish(topic, encode_batch(device, records), qos=1).wait_for_publish(10)


@pytest.fixture
def unlimited_broker(make_broker, monkeypatch):
    """mosquitto without a packet size limit of its own: only the gateway's stands."""
    written = broker_module.config_text

    def without_limit(config):
        text = written(config)
        return "\n".join(x for x in text.splitlines() if not x.startswith("max_packet_size")) + "\n"

    monkeypatch.setattr(broker_module, "config_text", without_limit)
    return make_broker()


def test_the_broker_drops_oversize_messages_for_the_gateway(unlimited_broker, make_gateway):
    gateway = make_gateway(unlimited_broker, None)
    device, _ = _client(unlimited_broker, "cam-1")
    _good(device, "cam-1", 0, 10)
    wait_for(lambda: gateway.metric(RECORDS) == 10, 20, "the first records")
    before = rss(gateway.proc.pid)

    topic = device_topic(PREFIX, "cam-1", "telemetry")
    for _ in range(4):
        device.publish(topic, b"x" * HUGE, qos=1).wait_for_publish(60)  # the broker took it
    _good(device, "cam-1", 10, 10)  # queued behind the big ones: they were dealt with first
    wait_for(lambda: gateway.metric(RECORDS) == 20, 60, "the records after the big messages")

    grown = rss(gateway.proc.pid) - before
    now = rss(gateway.proc.pid, "VmRSS")
    mib = 2**20
    print(f"peak RSS {before / mib:.1f} MiB, grown by {grown / mib:.1f} MiB; now {now / mib:.1f}")
    assert grown < HUGE // 4, f"the gateway's peak RSS grew by {grown / 2**20:.1f} MiB"
    assert gateway.metric("edgefleet_gateway_ingest_messages_total{kind=malformed}") is None
    assert gateway.proc.poll() is None
    assert gateway.stop() == 0
    device.disconnect()
    device.loop_stop()


def test_the_site_broker_refuses_oversize_messages_from_a_device(broker, make_gateway):
    assert f"max_packet_size {MAX_PACKET_BYTES}" in broker_module.config_text(broker.config)
    gateway = make_gateway(broker, None)
    device, gone = _client(broker, "cam-1")
    topic = device_topic(PREFIX, "cam-1", "telemetry")
    device.publish(topic, b"x" * (MAX_PACKET_BYTES + 1), qos=1)
    assert gone.wait(10), "the broker kept a device that sent an oversize packet"
    device.disconnect()
    device.loop_stop()

    device, _ = _client(broker, "cam-1")
    size = len(make_record("cam-1", BOOT, 100)) + 1  # records 0..999 are no longer than this
    largest = (MAX_BATCH_BYTES - batch_overhead("cam-1") - 1000) // size
    _good(device, "cam-1", 0, largest)  # the largest legal batch still goes through
    _good(device, "cam-1", largest, 10)
    wait_for(lambda: gateway.metric(RECORDS) == largest + 10, 20, "records after the refusal")
    assert gateway.metric("edgefleet_gateway_ingest_messages_total{kind=malformed}") is None
    device.disconnect()
    device.loop_stop()
