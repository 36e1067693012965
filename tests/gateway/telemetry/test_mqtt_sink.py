"""The uplink to a cloud MQTT broker: a second real mosquitto that requires client certificates
(mutual TLS, as AWS IoT Core and Azure IoT Hub do) takes every batch as a QoS 1 PUBLISH with its
idempotency key, across a restart of that broker; a client without a certificate gets nowhere."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import UplinkConfig
from gateway.telemetry.mqtt_sink import CONTENT_TYPE, MqttSink
from gateway.telemetry.sinks import SinkError
from gateway.telemetry.spool import Batch
from tests.gateway.support import Publisher, make_record, wait_for

TOPIC = "edgefleet/site1/telemetry"


class Collector:
    """The cloud's consumer: a persistent MQTT 5 session with its own certificate."""

    def __init__(self, broker, cert):
        self.ids: set[tuple[str, str, int]] = set()
        self.messages: list[dict] = []
        self.lock = threading.Lock()
        context = ssl.create_default_context(cafile=str(broker.ca.ca.cert))
        context.load_cert_chain(cert.cert, cert.key)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="collector", protocol=mqtt.MQTTv5
        )
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *a: c.subscribe(TOPIC, qos=1)
        self.client.on_message = self._message
        self.port = broker.config.port

    def _message(self, client, userdata, message) -> None:
        properties = dict(message.properties.UserProperty)
        lines = gzip.decompress(message.payload).splitlines()
        with self.lock:
            self.messages.append(properties | {"type": message.properties.ContentType})
            for line in lines:
                record = json.loads(line)
                self.ids.add((record["dev"], record["boot"], record["seq"]))
            assert int(properties["records"]) == len(lines)

    def start(self) -> Collector:
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = 300
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=session)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_every_batch_reaches_the_cloud_broker_across_its_restart(broker, make_broker, make_gateway):
    cloud = make_broker(tls=True)
    cloud.login("collector", site=True)
    collector = Collector(cloud, cloud.ca.issue("collector")).start()
    certificate = cloud.ca.issue("gateway")  # the site user the cloud broker's ACL knows
    uplink = {
        "sink": "mqtt", "host": "localhost", "port": cloud.config.port,
        "ca_file": cloud.ca.ca.cert, "cert_file": certificate.cert, "key_file": certificate.key,
        "timeout_s": 2.0, "backoff_base_s": 0.05, "backoff_cap_s": 0.5,
    }  # fmt: skip
    gateway = make_gateway(broker, None, uplink=uplink)
    devices = [Publisher(broker, f"dev-{i}", batch=20, interval=0.02).start() for i in range(3)]
    wait_for(lambda: len(collector.ids) >= 300, 30, "records in the cloud broker")
    cloud.restart()  # graceful: it keeps the collector's session and what is queued for it
    wait_for(lambda: len(collector.ids) >= 900, 60, "records after the restart")
    published = {}
    for device in devices:
        device.finish()
        published |= device.published
    wait_for(lambda: set(published) <= collector.ids, 60, "every record in the cloud broker")
    collector.stop()
    assert collector.ids == set(published)
    assert {m["type"] for m in collector.messages} == {CONTENT_TYPE}
    assert all(len(m["idempotency-key"]) == 40 for m in collector.messages)
    assert gateway.stop() == 0


async def test_a_gateway_without_a_client_certificate_is_refused(make_broker):
    cloud = make_broker(tls=True)
    config = UplinkConfig(sink="mqtt", host="localhost", port=cloud.config.port,
                          ca_file=cloud.ca.ca.cert, timeout_s=2.0)  # fmt: skip
    record = make_record("dev-1", "ab" * 8, 1) + b"\n"
    batch = Batch(1, 1, 1, record, "c" * 40)
    async with MqttSink(config, "site1") as sink:
        await asyncio.sleep(2.0)
        assert not sink.connected.is_set()
        with pytest.raises(SinkError, match="not connected"):
            await sink.send(batch, gzip.compress(record))
    certificate = cloud.ca.issue("gateway")
    config = UplinkConfig(sink="mqtt", host="localhost", port=cloud.config.port,
                          ca_file=cloud.ca.ca.cert, cert_file=certificate.cert,
                          key_file=certificate.key, timeout_s=2.0)  # fmt: skip
    async with MqttSink(config, "site1") as sink:
        await asyncio.to_thread(sink.connected.wait, 10)
        await sink.send(batch, gzip.compress(record))  # returns at the PUBACK
