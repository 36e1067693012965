"""Commands to devices: QoS 1 on ``<prefix>/dev/<id>/cmd``, each send done at the broker's PUBACK.

A connection of its own (user name and client id ``<mqtt.username>-cmd``, or client id
``<mqtt.client_id>-cmd`` without a user name; clean start) rather than the
ingest's: the ingest holds its network thread for backpressure, which would also hold back the
PUBACKs of commands, and the ingest's persistent session is for receiving only. A send that is
not acknowledged within the timeout raises, so the caller does not record an offer the broker
never took; a command can then arrive twice, and a device treats a repeated offer as the
same update.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import paho.mqtt.client as mqtt
import structlog

from gateway.config import MqttConfig
from gateway.mqtt_client import paho_client
from protocol.broker_auth import command_user
from protocol.topics import Command, device_topic

log = structlog.get_logger()


class CommandPublisher:
    """``async with CommandPublisher(mqtt, timeout) as p: await p.send(device, command)``."""

    def __init__(self, config: MqttConfig, timeout_s: float):
        self.config, self.timeout_s = config, timeout_s
        self.connected = threading.Event()
        self._pending: dict[int, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("command_connection_refused", reason=str(reason_code))
            return
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._loop.call_soon_threadsafe(self._acked, mid, reason_code)

    def _acked(self, mid: int, reason_code) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if reason_code.is_failure:
            future.set_exception(ConnectionError(f"broker refused the command: {reason_code}"))
        else:
            future.set_result(None)

    async def send(self, device: str, command: Command) -> None:
        """Publish and wait for the PUBACK; ``ConnectionError`` or ``TimeoutError`` otherwise."""
        if not self.connected.is_set():
            raise ConnectionError("not connected to the broker")
        topic = device_topic(self.config.prefix, device, "cmd")
        info = self._client.publish(topic, command.encode(), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
        # The PUBACK is handed to this loop with call_soon_threadsafe, so it is seen only after
        # this synchronous block has registered the future.
        future = self._loop.create_future()
        self._pending[info.mid] = future
        try:
            await asyncio.wait_for(future, self.timeout_s)
        finally:
            self._pending.pop(info.mid, None)

    async def __aenter__(self) -> CommandPublisher:
        self._loop = asyncio.get_running_loop()
        config = self.config
        if config.username is not None:  # the broker binds the client id to the user name
            config = dataclasses.replace(config, username=command_user(config.username))
        client = paho_client(config, command_user(config.client_id)[:128], persistent=False)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        client.loop_start()
        self._client = client
        return self

    async def __aexit__(self, *exc) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
