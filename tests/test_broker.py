"""The site broker as configured by ``firmware_sim.broker``, on a real mosquitto: every client
logs in, its client id is its user name, a device reaches only its own topics and cannot take
another client's session, TLS with client certificates, kill -9."""

from __future__ import annotations

import queue
import socket
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from firmware_sim.broker import (
    BrokerConfig,
    BrokerError,
    Mosquitto,
    catches_sighup,
    config_text,
    probe_login,
)
from protocol import broker_auth
from tests.conftest import GATEWAY_USER

CONNACK_NOT_AUTHORIZED = 5


def connect(
    broker, client_id: str, user=None, cert=None, clean=True, on_message=None
) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean,
    )
    if user:
        client.username_pw_set(*user)
    if cert:
        client.tls_set(
            ca_certs=str(broker.ca.ca.cert), certfile=str(cert.cert), keyfile=str(cert.key)
        )
    client.on_message = on_message
    connected: queue.Queue = queue.Queue()
    client.on_connect = lambda _c, _u, _f, rc, _p=None: connected.put(rc)
    client.connect(broker.config.host, broker.config.port)
    client.loop_start()
    rc = connected.get(timeout=5)
    assert not rc.is_failure, f"{client_id}: {rc}"
    return client


def collect(client: mqtt.Client, topic: str) -> queue.Queue:
    received: queue.Queue = queue.Queue()
    client.on_message = lambda _c, _u, msg: received.put((msg.topic, msg.payload))
    client.subscribe(topic, qos=1)
    time.sleep(0.2)  # the SUBACK
    return received


def drain(q: queue.Queue, timeout: float = 1.0) -> list:
    items = []
    try:
        while True:
            items.append(q.get(timeout=timeout))
    except queue.Empty:
        return items


def close(*clients: mqtt.Client) -> None:
    for client in clients:
        client.disconnect()
        client.loop_stop()


def test_a_device_reaches_only_its_own_topics(broker):
    gateway = connect(broker, "gateway", user=GATEWAY_USER)
    received = collect(gateway, "edgefleet/#")
    # pi-0001 logs in with valid credentials but sends pi-0002's client id
    device = connect(broker, "pi-0002", user=broker.login("pi-0001"))
    spy = collect(device, "edgefleet/site/dev/pi-0002/cmd")
    device.publish("edgefleet/site/dev/pi-0001/telemetry", b"mine", qos=1).wait_for_publish(5)
    for kind in ("telemetry", "status", "events"):
        forged = device.publish(f"edgefleet/site/dev/pi-0002/{kind}", b"forged", qos=1, retain=True)
        forged.wait_for_publish(5)
    gateway.publish("edgefleet/site/dev/pi-0002/cmd", b"for 0002", qos=1).wait_for_publish(5)
    assert drain(received) == [
        ("edgefleet/site/dev/pi-0001/telemetry", b"mine"),
        ("edgefleet/site/dev/pi-0002/cmd", b"for 0002"),
    ]
    assert drain(spy) == [], "a device read another device's commands"
    close(device, gateway)
    # and nothing forged was retained for a later subscriber
    late = connect(broker, "late", user=broker.login("late", site=True))
    assert drain(collect(late, "edgefleet/+/dev/pi-0002/#")) == []
    close(late)


def test_a_device_cannot_take_the_gateways_session(broker):
    gw_user = broker.login("gw-site1", site=True)
    gateway = connect(broker, "gw-site1", user=gw_user, clean=False)
    gateway.subscribe("edgefleet/+/dev/+/telemetry", qos=1)
    time.sleep(0.2)
    close(gateway)  # offline: the broker queues telemetry for its session

    device_user = broker.login("pi-0001")
    device = connect(broker, "pi-0001", user=device_user)
    for seq in range(20):
        device.publish("edgefleet/site/dev/pi-0001/telemetry", b"%d" % seq, qos=1).wait_for_publish(
            5
        )
    # the device now connects with the gateway's client id under its own user name
    thief = connect(broker, "gw-site1", user=device_user, clean=False)
    stolen = collect(thief, "edgefleet/+/dev/pi-0001/cmd")

    received: queue.Queue = queue.Queue()
    gateway = connect(
        broker,
        "gw-site1",
        user=gw_user,
        clean=False,
        on_message=lambda _c, _u, msg: received.put(msg.payload),
    )
    got = drain(received, timeout=2.0)
    assert got == [b"%d" % seq for seq in range(20)], "the site lost queued records"
    assert drain(stolen, timeout=0.1) == []
    assert gateway.is_connected(), "the device disconnected the gateway"
    close(thief, device, gateway)


def test_anonymous_and_wrong_passwords_are_refused(broker):
    host, port = broker.config.host, broker.config.port
    user, password = broker.login("pi-0001")
    assert probe_login(host, port, user, password) == 0
    assert probe_login(host, port, user, password + "x") == CONNACK_NOT_AUTHORIZED
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pi-0001")
    refused: queue.Queue = queue.Queue()
    anonymous.on_connect = lambda _c, _u, _f, rc, _p=None: refused.put(rc)
    anonymous.connect(host, port)
    anonymous.loop_start()
    assert refused.get(timeout=5).is_failure
    anonymous.loop_stop()


def test_the_password_file_is_what_mosquitto_passwd_writes(tmp_path):
    line = broker_auth.password_line("alice", "secret", bytes.fromhex("b6c71a93a24cc6d6e10db55b"))
    assert line == (
        "alice:$7$101$tscak6JMxtbhDbVb$G7EvE0vNRv5/BHj597JZ1xz16eEdRtgoGNJZ193Vw6wSFBgiTy13jr5m"
        "4Ijqt/vA0GyBPkQf52zT/fZt227Ofg=="
    )


def test_no_plain_listener_off_loopback(tmp_path):
    with pytest.raises(BrokerError, match="needs TLS"):
        config_text(BrokerConfig(workdir=tmp_path, port=1883, host="0.0.0.0"))
    text = config_text(BrokerConfig(workdir=tmp_path, port=1883))
    for line in ("allow_anonymous false", "use_username_as_clientid true", "max_packet_size"):
        assert line in text


def test_tls_with_client_certificates(make_broker):
    broker = make_broker(tls=True)
    assert broker.url.startswith("mqtts://")
    broker.login("gw", site=True)
    gateway = connect(broker, "gw", cert=broker.ca.issue("gw"))
    received = collect(gateway, "edgefleet/#")
    device = connect(broker, "dev7", cert=broker.ca.issue("dev7"))
    device.publish("edgefleet/site/dev/dev7/status", b"up", qos=1).wait_for_publish(5)
    device.publish("edgefleet/site/dev/dev8/status", b"forged", qos=1).wait_for_publish(5)
    # the certificate's name is the identity, whatever client id is sent
    other = connect(broker, "dev8", cert=broker.ca.issue("dev7"))
    other.publish("edgefleet/site/dev/dev8/status", b"forged", qos=1).wait_for_publish(5)
    assert drain(received) == [("edgefleet/site/dev/dev7/status", b"up")]
    close(other, device, gateway)


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
    user = broker.login("dev1")
    broker.kill()
    assert not broker.running
    with pytest.raises(OSError):
        connect(broker, "dev1", user=user)
    broker.start()
    assert broker.config.port == port
    client = connect(broker, "dev1", user=user)
    info = client.publish("edgefleet/s/dev/dev1/events", b"x", qos=1)
    info.wait_for_publish(5)
    assert info.is_published()
    close(client)


def test_a_reload_waits_until_the_broker_handles_sighup(tmp_path):
    """mosquitto listens before it installs its signal handlers; a SIGHUP in between (a busy
    machine widens the window) ends the process. A stand-in that installs its handler late is
    reloaded, not killed."""
    script = (
        "import signal, sys, time\n"
        "time.sleep(0.5)\n"
        "signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))\n"
        "time.sleep(10)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert not catches_sighup(process.pid)
        broker = Mosquitto(BrokerConfig(tmp_path, 1))
        broker._proc = process
        broker._reload()
        assert process.wait(5) == 7  # the handler ran: the reload reached a ready process
    finally:
        process.kill()
