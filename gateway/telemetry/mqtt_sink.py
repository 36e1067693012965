"""The uplink to a cloud MQTT broker, the way AWS IoT Core and Azure IoT Hub take device data:
mutual TLS (the gateway's client certificate), MQTT 5, each batch one QoS 1 PUBLISH of gzip
NDJSON with the user properties ``idempotency-key`` and ``records``.

A batch counts as delivered only at its PUBACK. Not connected, a PUBACK that does not come in
``timeout_s``, or a connection lost while waiting is a ``SinkError``: the uplink sends the
batch again, under the same key, so the cloud side deduplicates. A batch larger than the
Maximum Packet Size the broker announced is ``Refused`` as a 413, which makes the uplink halve
it; a PUBACK whose reason says the payload is bad is ``Refused`` as a 422. paho runs its network
loop in its own thread and reconnects by itself; results cross to the event loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import UplinkConfig
from gateway.telemetry.sinks import Refused, SinkError
from gateway.telemetry.spool import Batch
from protocol.topics import default_prefix

log = structlog.get_logger()
CONTENT_TYPE = "application/x-ndjson+gzip"
PACKET_OVERHEAD = 1024  # fixed header, topic and properties, generously
PAYLOAD_FORMAT_INVALID = 0x99
RECONNECT_MAX_S = 30


def default_topic(site: str) -> str:
    return f"{default_prefix(site)}/telemetry"


def tls_context(config: UplinkConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.cert_file is not None:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


class MqttSink:
    """``async with MqttSink(config, site) as sink: await sink.send(batch, body_gz)``."""

    def __init__(self, config: UplinkConfig, site: str):
        self.config = config
        self.topic = config.topic or default_topic(site)
        self.client_id = config.client_id or f"edgefleet-gateway-{site}"
        self.connected = threading.Event()
        self.max_packet: int | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("cloud_mqtt_refused", reason=str(reason_code))
            return
        self.max_packet = getattr(properties, "MaximumPacketSize", None)
        self.connected.set()
        log.info("cloud_mqtt_connected", host=self.config.host, port=self.config.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set():
            log.warning("cloud_mqtt_disconnected", reason=str(reason_code))
        self.connected.clear()
        self._loop.call_soon_threadsafe(self._fail_pending, str(reason_code))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._loop.call_soon_threadsafe(self._acked, mid, reason_code)

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SinkError("connection", f"lost before the PUBACK: {reason}"))
        self._pending.clear()

    def _acked(self, mid: int, reason_code) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if reason_code.value == PAYLOAD_FORMAT_INVALID:
            future.set_exception(Refused(422, f"broker: {reason_code}"))
        elif reason_code.is_failure:
            future.set_exception(SinkError("refused", f"broker: {reason_code}"))
        else:
            future.set_result(None)

    async def send(self, batch: Batch, body_gz: bytes) -> None:
        where = f"{self.config.host}:{self.config.port}"
        if not self.connected.is_set():
            raise SinkError("connection", f"not connected to {where}")
        if self.max_packet is not None and len(body_gz) + PACKET_OVERHEAD > self.max_packet:
            raise Refused(413, f"{len(body_gz)} bytes exceed the broker's {self.max_packet}")
        properties = Properties(PacketTypes.PUBLISH)
        properties.ContentType = CONTENT_TYPE
        properties.UserProperty = [("idempotency-key", batch.key), ("records", str(batch.records))]
        info = self._client.publish(self.topic, body_gz, qos=1, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SinkError("connection", f"publish to {where}: {mqtt.error_string(info.rc)}")
        # The PUBACK reaches this loop through call_soon_threadsafe: after this registration.
        future = self._loop.create_future()
        self._pending[info.mid] = future
        try:
            await asyncio.wait_for(future, self.config.timeout_s)
        except TimeoutError:
            raise SinkError("timeout", f"no PUBACK in {self.config.timeout_s}s") from None
        finally:
            self._pending.pop(info.mid, None)

    async def __aenter__(self) -> MqttSink:
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        client.tls_set_context(tls_context(self.config))
        client.connect_timeout = self.config.timeout_s
        client.reconnect_delay_set(1, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.config.host, self.config.port, keepalive=30, clean_start=True)
        client.loop_start()
        self._client = client
        return self

    async def __aexit__(self, *exc) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
