"""The mosquitto fixture is real: ACLs by client id, TLS with client certificates, kill -9."""

from __future__ import annotations

import queue
import socket
import ssl

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import GATEWAY_USER


def connect(broker, client_id: str, user=None, cert=None) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    if user:
        client.username_pw_set(*user)
    if cert:
        client.tls_set(
            ca_certs=str(broker.ca.ca.cert), certfile=str(cert.cert), keyfile=str(cert.key)
        )
    client.connect(broker.config.host, broker.config.port)
    client.loop_start()
    return client


def subscribe_all(broker, **kw) -> tuple[mqtt.Client, queue.Queue]:
    received: queue.Queue = queue.Queue()
    client = connect(broker, "gw", user=GATEWAY_USER, **kw)
    client.on_message = lambda _c, _u, msg: received.put((msg.topic, msg.payload))
    client.subscribe("edgefleet/#", qos=1)[0]
    return client, received


def drain(q: queue.Queue, timeout: float = 1.0) -> list:
    items = []
    try:
        while True:
            items.append(q.get(timeout=timeout))
    except queue.Empty:
        return items


def test_device_writes_only_its_own_topics(broker):
    gateway, received = subscribe_all(broker)
    device = connect(broker, "dev1")
    device.publish("edgefleet/site/dev/dev1/telemetry", b"mine", qos=1).wait_for_publish(5)
    device.publish("edgefleet/site/dev/dev2/telemetry", b"forged", qos=1).wait_for_publish(5)
    assert drain(received) == [("edgefleet/site/dev/dev1/telemetry", b"mine")]
    for client in (device, gateway):
        client.loop_stop()
        client.disconnect()


def test_tls_with_client_certificates(make_broker):
    broker = make_broker(tls=True)
    assert broker.url.startswith("mqtts://")
    gateway, received = subscribe_all(broker, cert=broker.ca.issue("gw"))
    device = connect(broker, "dev7", cert=broker.ca.issue("dev7"))
    device.publish("edgefleet/site/dev/dev7/status", b"up", qos=1).wait_for_publish(5)
    assert drain(received) == [("edgefleet/site/dev/dev7/status", b"up")]
    for client in (device, gateway):
        client.loop_stop()
        client.disconnect()


def test_tls_refuses_a_client_without_certificate(make_broker):
    broker = make_broker(tls=True)
    context = ssl.create_default_context(cafile=str(broker.ca.ca.cert))
    raw = socket.create_connection((broker.config.host, broker.config.port), timeout=5)
    # TLS 1.3 finishes the client's side of the handshake before the server's verdict;
    # the refusal arrives as an alert on the first read.
    with (
        context.wrap_socket(raw, server_hostname="localhost") as tls,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
    ):
        tls.sendall(b"\x10\x00")
        tls.recv(1)


def test_kill_and_restart_on_the_same_port(broker):
    port = broker.config.port
    broker.kill()
    assert not broker.running
    with pytest.raises(OSError):
        connect(broker, "dev1")
    broker.start()
    assert broker.config.port == port
    client = connect(broker, "dev1")
    info = client.publish("edgefleet/s/dev/dev1/events", b"x", qos=1)
    info.wait_for_publish(5)
    assert info.is_published()
    client.loop_stop()
    client.disconnect()
