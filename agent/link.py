"""The agent's MQTT link: connect (client id = device id, last will = offline status), publish
status, events and telemetry batches from the spool, receive commands, and reconnect with
exponential backoff and full jitter when anything on the connection fails.

Telemetry leaves the spool only after its PUBACK: ``Client.publish(qos=1)`` returns once paho
has called ``on_publish`` for the message id, which for QoS 1 is the PUBACK. Captured samples
(their own spool, their own topic) go the same way, but only while no telemetry batch is due:
telemetry first.

A publish waits for its PUBACK as long as the connection lives. A busy broker acknowledges late,
and giving up on a live connection only adds a reconnect (and a resend) to its load. A dead
connection is found by MQTT keepalive: no PINGRESP within ``keepalive_s`` closes the socket, and
the session ends with the lost connection. Connect, subscribe and the goodbye keep
``connect_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt
import structlog

from agent.bad_input import BadInput
from agent.config import MqttConfig, TelemetryConfig
from agent.spool import Spool
from edgefleet.backoff import backoff_delay
from protocol.telemetry import batch_overhead, encode_batch
from protocol.topics import MAX_CMD_BYTES, Command, Event, ProtocolError, Status, device_topic

MAX_OUTBOX = 256

log = structlog.get_logger()


def batch_due(depth: int, batch_records: int, age: float | None, batch_age: float) -> bool:
    """Send now: a full batch is waiting, or the oldest waiting record is old enough."""
    return depth >= batch_records or (depth > 0 and age is not None and age >= batch_age)


class _Stopped(Exception):
    """The daemon asked the link to end the session."""


@dataclass
class LinkStats:
    connects: int = 0
    batches: int = 0
    records: int = 0
    samples: int = 0
    events_dropped: int = 0


class Link:
    """One long-lived MQTT link. ``run()`` until ``stop()``; ``status`` is called whenever
    status is published; ``notify_status()`` asks for a publish now; ``send_event()`` queues an
    event (bounded, oldest dropped and counted when the broker is away for long)."""

    def __init__(
        self,
        device: str,
        mqtt: MqttConfig,
        telemetry: TelemetryConfig,
        spool: Spool,
        status: Callable[[], Status],
        on_command: Callable[[Command], None],
        bad_input: BadInput,
    ):
        self._device, self._mqtt, self._tel = device, mqtt, telemetry
        self._spool, self._status, self._on_command, self._bad_input = (
            spool,
            status,
            on_command,
            bad_input,
        )
        self.samples: Spool | None = None  # captured samples, sent while no telemetry is due
        self._topics = {
            kind: device_topic(mqtt.prefix, device, kind)
            for kind in ("telemetry", "samples", "status", "events", "cmd")
        }
        self._stop = asyncio.Event()
        self._flushing = False
        self._status_wanted = asyncio.Event()
        self._outbox: deque[Event] = deque()
        self._outbox_changed = asyncio.Event()
        self.connected = False
        self.stats = LinkStats()
        self._current: aiomqtt.Client | None = None

    def stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        """Drop the connection as a power cut would: no DISCONNECT, no offline status (the
        broker publishes the last will), and no new connection."""
        self._stop.set()
        paho = self._current._client if self._current else None
        sock = paho.socket() if paho else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def flush(self) -> None:
        """Send what the spool holds now, without waiting for a full or old batch."""
        self._flushing = True
        self._spool.changed.set()

    def notify_status(self) -> None:
        self._status_wanted.set()

    def send_event(self, event: Event) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.popleft()
            self.stats.events_dropped += 1
        self._outbox.append(event)
        self._outbox_changed.set()

    def _client(self) -> aiomqtt.Client:
        m = self._mqtt
        tls = None
        if m.tls:
            import ssl  # only here: a plain-MQTT agent runs without it (agent.lean)

            tls = aiomqtt.TLSParameters(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        return aiomqtt.Client(
            m.host,
            m.port,
            identifier=self._device,
            username=m.username,
            password=m.password,
            will=aiomqtt.Will(
                self._topics["status"], Status.offline(self._device).encode(), qos=1, retain=True
            ),
            clean_session=False,
            keepalive=m.keepalive_s,
            timeout=m.connect_timeout_s,
            tls_params=tls,
        )

    async def run(self) -> None:
        """Connect, serve, reconnect, until ``stop()``; then publish offline and disconnect.

        One client is reused across connections (aiomqtt's context is reusable); its connect
        and disconnect are bounded by the client's own timeout.
        """
        client, attempt = self._client(), 0
        self._current = client
        while not self._stop.is_set():
            try:
                async with client:
                    attempt = 0
                    self.stats.connects += 1
                    await self._session(client)
            except aiomqtt.MqttReentrantError:
                client = self._client()  # a disconnect that timed out left the old one locked
                self._current = client
            except (aiomqtt.MqttError, OSError) as exc:
                log.info("mqtt_connect_failed", error=str(exc))
            if self._stop.is_set():
                break
            delay = backoff_delay(
                attempt, self._mqtt.reconnect_base_s, self._mqtt.reconnect_max_s, random.random
            )
            attempt += 1
            log.info("mqtt_retry", retry_in_s=round(delay, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Serve one connection until it fails or the daemon stops (then say goodbye)."""
        self.connected = True
        log.info("mqtt_connected", host=self._mqtt.host, port=self._mqtt.port)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._status_loop(client))
                group.create_task(self._command_loop(client))
                group.create_task(self._telemetry_loop(client))
                group.create_task(self._event_loop(client))
                group.create_task(self._wait_stop())
        except* _Stopped:
            await self._goodbye(client)
        except* (aiomqtt.MqttError, TimeoutError, OSError) as group_error:
            log.info("mqtt_disconnected", error=str(group_error.exceptions[0]))
        finally:
            self.connected = False

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _Stopped

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Clean end: retained offline status; leaving ``async with`` then sends DISCONNECT,
        so the broker does not send the will."""
        try:
            await client.publish(
                self._topics["status"],
                Status.offline(self._device).encode(),
                qos=1,
                retain=True,
                timeout=min(self._mqtt.connect_timeout_s, 2.0),
            )
            log.info("mqtt_disconnected_cleanly")
        except (aiomqtt.MqttError, OSError) as exc:
            log.info("mqtt_goodbye_failed", error=str(exc))

    async def _publish(
        self, client: aiomqtt.Client, kind: str, payload: bytes, retain: bool = False
    ) -> None:
        """QoS 1, returning on the PUBACK however late it comes (keepalive guards the link)."""
        await client.publish(self._topics[kind], payload, qos=1, retain=retain, timeout=math.inf)

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            self._status_wanted.clear()
            await self._publish(client, "status", self._status().encode(), retain=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_wanted.wait(), self._tel.status_interval_s)

    async def _event_loop(self, client: aiomqtt.Client) -> None:
        while True:
            while self._outbox:
                await self._publish(client, "events", self._outbox[0].encode())
                self._outbox.popleft()
            self._outbox_changed.clear()
            await self._outbox_changed.wait()

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self._topics["cmd"], qos=1)
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = b""
            if len(payload) > MAX_CMD_BYTES:
                self._bad_input.record("bad_command", "oversize command", size=len(payload))
                continue
            try:
                command = Command.decode(bytes(payload))
            except ProtocolError as exc:
                self._bad_input.record("bad_command", str(exc))
                continue
            self._on_command(command)

    async def _telemetry_loop(self, client: aiomqtt.Client) -> None:
        """Telemetry batches as they fall due; samples only while no telemetry is due."""
        spool, samples, tel = self._spool, self.samples, self._tel
        overhead = batch_overhead(self._device)
        while True:
            stats = spool.stats
            since = spool.pending_since
            age = None if since is None else time.monotonic() - since
            flush = self._flushing and stats.depth > 0
            if flush or batch_due(stats.depth, tel.batch_records, age, tel.batch_age_s):
                if await self._send(client, spool, "telemetry", overhead):
                    self.stats.batches += 1
                continue
            if samples is not None and samples.stats.depth:
                await self._send(client, samples, "samples", overhead)
                continue
            spool.changed.clear()
            changed = [spool.changed] + ([samples.changed] if samples is not None else [])
            if samples is not None:
                samples.changed.clear()
            wait = None if age is None else max(tel.batch_age_s - age, 0.0)
            await wait_any(changed, wait)

    async def _send(self, client: aiomqtt.Client, spool: Spool, kind: str, overhead: int) -> bool:
        """One batch of ``spool`` on the ``kind`` topic, deleted at its PUBACK."""
        tel = self._tel
        claim = await spool.claim(tel.batch_records, tel.batch_bytes, overhead)
        if claim is None:
            return False
        await self._publish(client, kind, encode_batch(self._device, claim.bodies))
        await spool.ack(claim)
        if kind == "samples":
            self.stats.samples += len(claim.bodies)
        else:
            self.stats.records += len(claim.bodies)
        return True


async def wait_any(events: list[asyncio.Event], within_s: float | None) -> None:
    """Until one of ``events`` is set, or ``within_s`` passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
