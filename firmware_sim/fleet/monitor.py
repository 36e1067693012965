"""What the simulator sees of the fleet: every device's retained status and every event, read
from the broker by a client with a persistent session (events queued while the broker restarts
are not missed), as an operator's dashboard would."""

from __future__ import annotations

import threading
from collections import Counter
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from protocol.topics import Event, ProtocolError, Status, parse_device_topic

# Refusals that are the device judging a model, not rejecting forged or stale metadata.
NOT_ATTACKS = ("health gate", "gate vectors unusable")
# Why a device is blocked when what it was served looked forged, stale or tampered with (an
# unreachable repository or a target not yet listed is the way, not an attack).
ATTACK_BLOCKS = ("expired", "rollback", "hash-mismatch", "too-long", "bad-signature", "untrusted")
DELTA_REFUSED = "delta refused ("


def is_attack(event: Event) -> bool:
    """An update the device refused, or could not verify and retries, or a delta it refused and
    replaced by the full model, because of what an attacker could have served."""
    reason = str(event.detail.get("reason", ""))
    if event.kind == "update_refused":
        return not reason.startswith(NOT_ATTACKS)
    if event.kind == "update_blocked":
        return reason.split(":", 1)[0] in ATTACK_BLOCKS
    return event.kind == "update_downloaded" and reason.startswith(DELTA_REFUSED)


class Monitor:
    def __init__(self, broker_url: str, prefix: str, user: tuple[str, str] | None) -> None:
        self.statuses: dict[str, Status] = {}
        self.events: list[Event] = []
        self.bad = 0
        self._lock = threading.Lock()
        self._prefix = prefix
        parts = urlsplit(broker_url)
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-monitor", clean_session=False
        )
        if user:
            self._client.username_pw_set(*user)
        self._client.reconnect_delay_set(0.1, 1.0)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async(parts.hostname, parts.port or 1883, keepalive=10)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        client.subscribe([(f"{self._prefix}/dev/+/status", 1), (f"{self._prefix}/dev/+/events", 1)])

    def _on_message(self, client, userdata, message) -> None:
        try:
            _, device, kind = parse_device_topic(message.topic)
            if kind == "status":
                status = Status.decode(message.payload)
                with self._lock:
                    self.statuses[device] = status
            elif kind == "events":
                event = Event.decode(message.payload)
                with self._lock:
                    self.events.append(event)
        except ProtocolError:
            with self._lock:
                self.bad += 1

    def status(self, device: str) -> Status | None:
        with self._lock:
            return self.statuses.get(device)

    def event_devices(self, kind: str, rollout: str | None = None) -> set[str]:
        with self._lock:
            return {
                e.device
                for e in self.events
                if e.kind == kind and (rollout is None or e.detail.get("rollout") == rollout)
            }

    def events_seen(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def attacks_refused(self) -> int:
        with self._lock:
            return sum(1 for e in self.events if is_attack(e))

    def event_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(e.kind for e in self.events)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
