"""Telemetry, status and events from the broker into the database, acknowledged only after commit.

aiomqtt 2.x acknowledges a QoS 1 message as soon as it is read, so the gateway uses paho-mqtt 2.x
with ``manual_ack=True``: paho's network thread queues each message, a writer task takes
everything queued (up to a limit), decodes and writes it in one transaction on the store thread,
and only after ``COMMIT`` sends the PUBACKs (``Client.ack(mid, qos)``). Many messages share one
fsync, and a crash before the commit leaves them unacknowledged, so the broker sends them again.

The session is persistent (MQTT 5: clean start off and a session expiry; MQTT 3.1.1, for brokers
without 5: clean session off), so the broker keeps queuing while the gateway is down and re-sends
unacknowledged messages when it comes back. Receive Maximum (MQTT 5) asks the broker to bound the
messages in flight; the gateway also enforces it by holding paho's thread while that many messages
wait, which bounds its memory. A PUBACK is sent only on the connection the message came on: after
a reconnect the broker re-sends instead. Maximum Packet Size (MQTT 5) makes the broker drop a
message too big for the contract instead of delivering it, so its size never reaches this process.

Nothing a device sends stops the gateway: a message that cannot be decoded, validated or stored,
for whatever reason, is malformed. Each message is written under its own savepoint inside the
group's transaction, so one that fails is rolled back alone; it is then kept as a dead letter,
counted by reason, and acknowledged with the rest of its group (sending it again would not make
it valid). Only a failure of the database itself (``sqlite3.OperationalError``: disk full, I/O)
ends the writer, with nothing of its group acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import IngestConfig, MqttConfig
from gateway.devices.inventory import Device, Inventory, apply_event, apply_status, touch
from gateway.metrics import Metrics
from gateway.mqtt_client import paho_client
from gateway.store import Store, add_counter, transaction
from gateway.telemetry.curation_stage import CurationStage
from gateway.telemetry.dead_letters import DeadLetters, Letter, message_letter
from gateway.telemetry.records import split_batch, split_records
from gateway.telemetry.spool import SpoolRow, UplinkSpool
from protocol.telemetry import TOPIC_BODIES
from protocol.topics import Event, ProtocolError, Status, parse_device_topic

log = structlog.get_logger()


@dataclass(frozen=True)
class Inbound:
    generation: int  # connection it arrived on
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Telemetry:
    """The records of one device message on its ``telemetry`` or ``samples`` topic."""

    device: str
    records: list[bytes]  # as the device sent them
    stream: str = "telemetry"
    parsed: list[dict] | None = None  # the same records decoded, when asked for


@dataclass(frozen=True)
class Malformed:
    kind: str  # telemetry, status, events, or topic
    reason: str  # a ProtocolError reason, or topic, device_mismatch, store, internal
    detail: str  # what is wrong, one line


def subscriptions(config: MqttConfig) -> list[str]:
    """Telemetry and samples are shared between replicas when a group is set; status and events
    are not, because retained messages are never sent on a shared subscription and every replica
    keeps the whole inventory."""
    base = f"{config.prefix}/dev/+"
    streams = [f"{base}/{kind}" for kind in TOPIC_BODIES]
    if config.share_group:
        streams = [f"$share/{config.share_group}/{topic}" for topic in streams]
    return [*streams, f"{base}/status", f"{base}/events"]


def classify(
    topic: str, payload: bytes, prefix: str, full: bool, parse: bool = False
) -> Telemetry | Status | Event | Malformed | None:
    """One message -> what it says, ``Malformed`` with the reason, or None (a cleared retained
    status). Telemetry comes with its records decoded (``parsed``) for samples or when
    ``parse`` asks for them; otherwise only what routing and accounting need is read."""
    try:
        topic_prefix, device, kind = parse_device_topic(topic)
    except ProtocolError as exc:
        return Malformed("topic", "topic", str(exc))
    if topic_prefix != prefix or kind == "cmd":
        return Malformed("topic", "topic", f"unexpected topic {topic[:200]!r}")
    if kind == "status" and not payload:
        return None
    try:
        if kind in TOPIC_BODIES and (parse or kind == "samples"):
            batch_device, records = split_records(payload, full, TOPIC_BODIES[kind])
            raws, parsed = [raw for _, raw in records], [data for data, _ in records]
            message = Telemetry(batch_device, raws, kind, parsed)
        elif kind in TOPIC_BODIES:
            batch_device, raws = split_batch(payload, full, TOPIC_BODIES[kind])
            message = Telemetry(batch_device, raws, kind)
        elif kind == "status":
            message = Status.decode(payload)
        else:
            message = Event.decode(payload)
    except ProtocolError as exc:
        return Malformed(kind, exc.reason, str(exc))
    except Exception as exc:  # noqa: BLE001 - a decoder's bug must not stop the gateway either
        return Malformed(kind, "internal", f"{type(exc).__name__}: {exc}")
    if message.device != device:
        detail = f"payload of device {message.device!r} on the topic of {device!r}"
        return Malformed(kind, "device_mismatch", detail)
    return message


TOPIC_KINDS = {Status: "status", Event: "events"}
DEVICE_BYTES = "device_record_bytes"  # record bytes devices sent (counters table)


class SampleCounter(Protocol):
    """Who counts samples by campaign as they arrive (inside the ingest's transaction)."""

    def count_sync(self, conn: sqlite3.Connection, device: str, campaigns: Counter) -> None: ...


@dataclass
class GroupResult:
    records: int = 0
    dropped: int = 0
    curated: Counter = field(default_factory=Counter)  # (stream, rule) -> records it dropped
    bytes_in: Counter = field(default_factory=Counter)  # stream -> record bytes received
    changed: dict[str, Device] = field(default_factory=dict)
    unsaved: set[str] = field(default_factory=set)  # devices changed only by telemetry so far
    kinds: dict[str, int] = field(default_factory=dict)
    malformed: list[tuple[str, Malformed]] = field(default_factory=list)  # topic, why
    device_messages: list[Status | Event] = field(default_factory=list)


class Ingest:
    """``async with Ingest(...)``: connected (and reconnecting) until the block ends."""

    def __init__(
        self,
        config: MqttConfig,
        ingest: IngestConfig,
        store: Store,
        spool: UplinkSpool,
        dead_letters: DeadLetters,
        inventory: Inventory,
        metrics: Metrics,
        on_spooled: Callable[[], None],
        on_failure: Callable[[BaseException], None],
        on_device_messages: Callable[[list[Status | Event]], None] | None = None,
        curation: CurationStage | None = None,
        samples: SampleCounter | None = None,
    ):
        """``on_device_messages`` gets each group's status and event messages after their
        commit; it must not block (the rollout service only queues them). ``curation`` decides
        which records go on to the spool (all, without it); ``samples`` counts campaigns'
        samples as they arrive."""
        self.config, self.ingest = config, ingest
        self.store, self.spool, self.inventory, self.metrics = store, spool, inventory, metrics
        self.dead_letters = dead_letters
        self.on_spooled, self.on_failure = on_spooled, on_failure
        self.on_device_messages = on_device_messages
        self.curation, self.samples = curation, samples
        self._inbox: deque[Inbound] = deque()
        self._wake = asyncio.Event()
        self._signalled = False
        self._generation = 0
        self._lock = threading.Lock()
        self._room = threading.Condition()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._task: asyncio.Task | None = None

    # -- paho's network thread ------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt_connect_refused", reason=str(reason_code))
            return
        with self._lock:
            self._generation += 1
        self.metrics.connected.set(1)
        topics = subscriptions(self.config)
        client.subscribe([(t, 1) for t in topics])
        log.info("mqtt_connected", session_present=flags.session_present, topics=topics)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self._generation += 1
        self.metrics.connected.set(0)
        log.warning("mqtt_disconnected", reason=str(reason_code))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("mqtt_subscription_refused", reasons=refused)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        # Nothing here may raise: an exception would end paho's network thread.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "(topic is not UTF-8)"
        self._inbox.append(
            Inbound(self._generation, message.mid, message.qos, topic, message.payload)
        )
        if not self._signalled:
            self._signalled = True
            self._loop.call_soon_threadsafe(self._wake.set)
        # Backpressure: holding paho's thread stops it reading the socket until the writer has
        # taken a group, so the inbox stays bounded even if the broker sends past Receive Maximum
        # (mosquitto 2.0.11 does once PUBACKs flow).
        with self._room:
            while len(self._inbox) >= self.config.receive_maximum and not self._closing:
                self._room.wait(1.0)

    # -- store thread ---------------------------------------------------------------------------

    def _persist_sync(self, conn, group: list[Inbound]) -> GroupResult:
        result = GroupResult()

        def write() -> int:
            now, full = time.time(), self.ingest.validation == "full"
            parse = self.curation is not None
            dropped = 0
            letters: list[Letter] = []
            for item in group:
                message = classify(item.topic, item.payload, self.config.prefix, full, parse)
                if message is None:
                    continue
                if not isinstance(message, Malformed):
                    stored = self._store_one_sync(conn, message, result, now)
                    if isinstance(stored, Malformed):
                        message = stored
                    else:
                        dropped += stored
                kind = type(message).__name__.lower()
                result.kinds[kind] = result.kinds.get(kind, 0) + 1
                if isinstance(message, Malformed):
                    result.malformed.append((item.topic, message))
                    letters.append(
                        message_letter(
                            message.kind, message.reason, message.detail, item.topic, item.payload
                        )
                    )
            if result.unsaved:
                Inventory.save_sync(conn, [result.changed[d] for d in result.unsaved])
            if letters:
                self.dead_letters.add_sync(conn, letters)
            return dropped

        result.dropped = transaction(conn, write)
        return result

    def _store_one_sync(
        self, conn, message: Telemetry | Status | Event, result: GroupResult, now: float
    ) -> int | Malformed:
        """Write one message under its own savepoint: the records dropped by the spool cap, or
        ``Malformed`` (rolled back) if it could not be stored."""
        changed = result.changed
        spool_stats = dataclasses.replace(self.spool.stats)
        conn.execute("SAVEPOINT message")
        try:
            row = changed.get(message.device) or self.inventory.devices.get(message.device)
            dropped = 0
            if isinstance(message, Telemetry):
                dropped = self._spool_sync(conn, message, result)
                device = touch(row, message.device, len(message.records), now)
            else:
                if isinstance(message, Status):
                    device = apply_status(row, message, now)
                else:
                    device = apply_event(row, message, now)
                Inventory.save_sync(conn, [device])
        except sqlite3.OperationalError:
            raise  # the database itself: nothing of the group may be acknowledged
        except Exception as exc:  # noqa: BLE001 - one device's message never stops the rest
            conn.execute("ROLLBACK TO message")
            conn.execute("RELEASE message")
            vars(self.spool.stats).update(vars(spool_stats))
            if self.curation is not None:
                self.curation.reload_sync(conn)
            detail = f"could not be stored: {type(exc).__name__}: {exc}"
            kind = message.stream if isinstance(message, Telemetry) else TOPIC_KINDS[type(message)]
            return Malformed(kind, "store", detail)
        conn.execute("RELEASE message")
        changed[message.device] = device
        if isinstance(message, Telemetry):
            result.records += len(message.records)
            result.unsaved.add(message.device)  # saved once, at the end of the group
        else:
            result.device_messages.append(message)
            result.unsaved.discard(message.device)
        return dropped

    def _spool_sync(self, conn, message: Telemetry, result: GroupResult) -> int:
        """Curate the message's records, count them, and spool what is kept; returns the
        records the spool cap dropped."""
        kept = message.records
        size = sum(map(len, kept))
        add_counter(conn, DEVICE_BYTES, size)
        if self.samples is not None and message.stream == "samples":
            campaigns = Counter(data.get("campaign") for data in message.parsed)
            self.samples.count_sync(conn, message.device, campaigns)
        if self.curation is not None:
            records = list(zip(message.parsed, message.records, strict=True))
            curated = self.curation.apply_sync(conn, message.device, message.stream, records)
            kept = curated.kept
            result.curated.update({(message.stream, r): n for r, n in curated.dropped.items()})
        result.bytes_in[message.stream] += size
        if not kept:
            return 0
        return self.spool.append_sync(conn, [SpoolRow(len(kept), b"\n".join(kept))])

    # -- event loop -----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        limit = self.ingest.max_messages_per_commit
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._signalled = False
            while self._inbox:
                group = [self._inbox.popleft() for _ in range(min(limit, len(self._inbox)))]
                with self._room:
                    self._room.notify_all()
                started = time.perf_counter()
                result = await self.store.run(self._persist_sync, group)
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
                self.inventory.replace(result.changed.values())
                self._ack(group)
                if result.records:
                    self.on_spooled()
                if result.device_messages and self.on_device_messages is not None:
                    self.on_device_messages(result.device_messages)
                self._account(result)

    def _account(self, result: GroupResult) -> None:
        for kind, count in result.kinds.items():
            self.metrics.messages.labels(kind).inc(count)
        self.metrics.records.inc(result.records)
        for stream, size in result.bytes_in.items():
            self.metrics.device_bytes.labels(stream).inc(size)
        for (stream, rule), count in result.curated.items():
            self.metrics.curated.labels(stream, rule).inc(count)
        for topic, why in result.malformed:
            self.metrics.malformed.labels(why.kind, why.reason).inc()
            log.warning(
                "malformed_message_dead_lettered",
                kind=why.kind,
                reason=why.reason,
                topic=topic[:200],
                detail=why.detail[:300],
            )
        if result.dropped:
            log.warning("spool_full_dropped_oldest", dropped=result.dropped)

    def _ack(self, group: list[Inbound]) -> None:
        with self._lock:
            generation = self._generation
        for item in group:
            if item.qos and item.generation == generation:
                self._client.ack(item.mid, item.qos)

    def _client_for(self) -> mqtt.Client:
        client = paho_client(self.config, self.config.client_id, persistent=True, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.on_failure(task.exception())

    async def __aenter__(self) -> Ingest:
        self._loop = asyncio.get_running_loop()
        self._client = self._client_for()
        self._task = asyncio.create_task(self._write_loop(), name="ingest-writer")
        self._task.add_done_callback(self._done)
        session: dict = {}  # MQTT 3.1.1: the persistent session comes from clean_session=False
        if self.config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.config.session_expiry_s
            properties.ReceiveMaximum = self.config.receive_maximum
            properties.MaximumPacketSize = self.config.max_packet_size
            session = {"clean_start": False, "properties": properties}
        self._client.connect_async(
            self.config.host, self.config.port, keepalive=self.config.keepalive_s, **session
        )
        self._client.loop_start()
        log.info("mqtt_connecting", host=self.config.host, port=self.config.port)
        return self

    async def __aexit__(self, *exc) -> None:
        with self._room:
            self._closing = True
            self._room.notify_all()
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
