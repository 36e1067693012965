"""A device that sends garbage: a client logged in with the device's own credentials (so the
broker lets it write the device's topics, exactly as a compromised or buggy device could)
publishes malformed messages there, next to the device's agent. The gateway must count each as
malformed and keep it as a dead letter, and go on; the oversize message never reaches it, since
the broker drops a client that sends a packet over its ``max_packet_size``.

Logging in as the device takes over its session (the broker binds client id to user name), so
the agent is disconnected for a moment and reconnects; that is part of what is being tested.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.telemetry import MAX_PACKET_BYTES
from protocol.topics import SCHEMA_VERSION, device_topic

BOOT = "0badc0de"
NESTING = 3000  # deeper than any JSON parser recurses, within the 8 KiB an event may take


@dataclass(frozen=True)
class Message:
    kind: str  # topic kind: telemetry, status, events
    payload: bytes
    retain: bool = False
    why: str = ""


def _record(device: str, seq: int, **changes) -> dict:
    record = {"dev": device, "boot": BOOT, "seq": seq, "ts_ms": 1, "kind": "inference"}
    return record | changes


def _batch(device: str, records) -> bytes:
    return json.dumps({"schema": SCHEMA_VERSION, "device": device, "records": records}).encode()


def malformed(device: str) -> list[Message]:
    """What one round of poison publishes, each a message the protocol refuses."""
    huge_psi = {"window": 200, "max_psi": 10**399, "alarm": False, "compared": True}
    status = {"schema": SCHEMA_VERSION, "device": device, "state": "online", "ts_ms": 1,
              "drift": huge_psi}  # fmt: skip
    deep = "[" * NESTING + "]" * NESTING
    return [
        Message("telemetry", _batch(device, [_record(device, 1, kind=[])]), why="kind []"),
        Message("status", json.dumps(status).encode(), True, "400-digit max_psi, retained"),
        Message("telemetry", _batch(device, "not a list"), why="records not a list"),
        Message(
            "events",
            json.dumps(
                {"schema": SCHEMA_VERSION, "device": device, "ts_ms": "now", "kind": 7}
            ).encode(),
            why="wrong types",
        ),
        Message("telemetry", _batch(device, [_record(device, 10**30)]), why="huge seq"),
        Message(
            "events",
            b'{"schema":1,"device":"'
            + device.encode()
            + b'","ts_ms":1,"kind":"x","detail":'
            + deep.encode()
            + b"}",
            why="deep nesting",
        ),
        Message(
            "telemetry",
            b'{"schema":1,"device":"\xff\xfe' + device.encode() + b'"}',
            why="invalid UTF-8",
        ),
    ]


def _logged_in(connected: threading.Event, device: str, timeout: float) -> None:
    if not connected.wait(timeout):
        raise TimeoutError(f"{device}: the broker did not accept the login")


def _until_acknowledged(
    client: mqtt.Client,
    connected: threading.Event,
    prefix: str,
    device: str,
    message: Message,
    timeout: float,
) -> bool:
    """Publish ``message`` again after each lost connection, until the broker acknowledges it;
    False if it never did (``timeout`` without a connection)."""
    while connected.wait(timeout):
        info = client.publish(
            device_topic(prefix, device, message.kind), message.payload, 1, message.retain
        )
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # not connected (any more): sent again
            continue
        if info.is_published():
            return True
    return False


def oversize(device: str) -> Message:
    """Over the broker's ``max_packet_size``: the broker disconnects the sender."""
    padding = "x" * (MAX_PACKET_BYTES + 1024)
    return Message("telemetry", _batch(device, [_record(device, 1, pad=padding)]), why="oversize")


@dataclass
class PoisonResult:
    published: int = 0  # malformed messages the broker acknowledged
    oversize_disconnected: bool = False


def publish(
    broker_url: str, prefix: str, device: str, login: tuple[str, str], rounds: int,
    timeout: float = 10.0,
) -> PoisonResult:  # fmt: skip
    """Log in as ``device``, publish ``rounds`` of ``malformed`` at QoS 1 (each waited for),
    then the oversize message; blocking, so run it in a thread.

    The device's own agent, taken over, logs in again and takes the session back; the client
    then reconnects and sends again what the broker had not acknowledged, until ``timeout``
    passes without a connection."""
    parts = urlsplit(broker_url)
    result = PoisonResult()
    connected, disconnected = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
    client.username_pw_set(*login)

    def on_connect(client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code == 0:
            disconnected.clear()
            connected.set()

    def on_disconnect(client, userdata, flags, reason_code, properties=None) -> None:
        connected.clear()
        disconnected.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.reconnect_delay_set(0.1, 1.0)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect(parts.hostname, parts.port or 1883, keepalive=10, clean_start=True,
                   properties=properties)  # fmt: skip
    client.loop_start()
    try:
        _logged_in(connected, device, timeout)
        for _ in range(rounds):
            for message in malformed(device):
                result.published += _until_acknowledged(
                    client, connected, prefix, device, message, timeout
                )
        _logged_in(connected, device, timeout)
        disconnected.clear()
        big = oversize(device)
        client.publish(device_topic(prefix, device, big.kind), big.payload, 1)
        result.oversize_disconnected = disconnected.wait(timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return result
