"""A device that claims to be someone else: it logs in with its own credentials but asks for
another device's client id, and once for the gateway's, then tries to publish telemetry and a
retained status on its victim's topics and to read its victim's commands.

Nothing is assumed refused: a site user (the witness) watches the victim's topics for the
impersonator's marker and sends a marked message to the victim's command topic that the
impersonator must not receive, and the gateway's log must show no lost broker session. An
attempt counts as refused only when it had none of those effects.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.topics import SCHEMA_VERSION, device_topic

SETTLE_S = 1.0  # for a message the broker let through to arrive
GATEWAY_DISCONNECTED = "mqtt disconnected"  # what the gateway logs when it loses its session


@dataclass
class Attempt:
    device: str
    client_id: str
    action: str  # publish-telemetry, publish-status, subscribe-cmd
    refused: bool
    how: str

    def to_json(self) -> dict:
        return {"device": self.device, "client_id": self.client_id, "action": self.action,
                "refused": self.refused, "how": self.how}  # fmt: skip


@dataclass
class _Client:
    """A paho client whose callbacks set events and collect what arrives."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    suback: list = field(default_factory=list)
    received: list[tuple[str, bytes]] = field(default_factory=list)


def _connect(url: str, client_id: str, login: tuple[str, str], timeout: float) -> _Client:
    parts = urlsplit(url)
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client = _Client(paho)
    paho.username_pw_set(*login)
    paho.on_connect = lambda c, u, f, rc, p=None: rc == 0 and client.connected.set()
    paho.on_message = lambda c, u, m: client.received.append((m.topic, m.payload))

    def on_subscribe(c, u, mid, codes, p=None):
        client.suback.extend(codes)
        client.subscribed.set()

    paho.on_subscribe = on_subscribe
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    paho.connect(parts.hostname, parts.port or 1883, 10, clean_start=True, properties=properties)
    paho.loop_start()
    if not client.connected.wait(timeout):
        _close(client)
        raise TimeoutError(f"{login[0]}: the broker did not accept the login")
    return client


def _close(client: _Client) -> None:
    client.client.disconnect()
    client.client.loop_stop()


def gateway_disconnects(log: Path) -> int:
    if not log.exists():
        return 0
    with log.open("rb") as stream:
        return stream.read().count(GATEWAY_DISCONNECTED.encode())


def attempt(
    broker_url: str,
    prefix: str,
    device: str,
    login: tuple[str, str],
    victim: str,
    client_id: str,
    witness_login: tuple[str, str],
    gateway_log: Path,
    timeout: float = 10.0,
) -> list[Attempt]:
    """One impersonation of ``victim`` (as ``client_id``) by ``device``; blocking."""
    marker = f"impersonated-{secrets.token_hex(6)}"
    topics = {kind: device_topic(prefix, victim, kind) for kind in ("telemetry", "status", "cmd")}
    witness = _connect(broker_url, f"{witness_login[0]}", witness_login, timeout)
    disconnects_before = gateway_disconnects(gateway_log)
    try:
        witness.client.subscribe([(topics["telemetry"], 1), (topics["status"], 1)])
        witness.subscribed.wait(timeout)
        intruder = _connect(broker_url, client_id, login, timeout)
        try:
            intruder.client.subscribe(topics["cmd"], 1)
            intruder.subscribed.wait(timeout)
            record = {"dev": victim, "boot": "0badc0de", "seq": 1, "ts_ms": 1,
                      "kind": "inference", "note": marker}  # fmt: skip
            batch = {"schema": SCHEMA_VERSION, "device": victim, "records": [record]}
            status = {"schema": SCHEMA_VERSION, "device": victim, "state": "offline",
                      "ts_ms": 1, "note": marker}  # fmt: skip
            published = [
                intruder.client.publish(topics["telemetry"], json.dumps(batch), 1),
                intruder.client.publish(topics["status"], json.dumps(status), 1, retain=True),
            ]
            for info in published:
                info.wait_for_publish(timeout)
            witness.client.publish(topics["cmd"], json.dumps({"probe": marker}), 1)
            time.sleep(SETTLE_S)
        finally:
            _close(intruder)
    finally:
        _close(witness)
    seen = {topic for topic, payload in witness.received if marker.encode() in payload}
    heard = [payload for _, payload in intruder.received if marker.encode() in payload]
    session_kept = gateway_disconnects(gateway_log) == disconnects_before
    results = []
    for action, topic in (("publish-telemetry", "telemetry"), ("publish-status", "status")):
        delivered = topics[topic] in seen
        results.append((action, not delivered, "delivered" if delivered else "not delivered"))
    how = f"suback {','.join(str(c) for c in intruder.suback) or 'none'}"
    results.append(("subscribe-cmd", not heard, how + ("; received" if heard else "")))
    attempts = []
    for action, refused, how in results:
        if client_id != device and not session_kept:
            refused, how = False, how + "; the gateway lost its session"
        attempts.append(Attempt(device, client_id, action, refused, how))
    return attempts
