"""Test doubles for the gateway's neighbours, all real: a cloud ingest (aiohttp, loopback) that
can fail on command and deduplicates by record id, device publishers (paho, client id = device
id), and the gateway itself as a separate process that can be killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from edgefleet import tomlconfig
from firmware_sim.broker import free_port
from protocol.broker_auth import command_user
from protocol.telemetry import Inference, InputSummary, Record, RecordId, encode_batch
from protocol.topics import device_topic

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
PREFIX = "edgefleet/site1"


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval=0.05):
    """Poll ``predicate`` until it is truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def make_record(device: str, boot: str, seq: int) -> bytes:
    body = Inference(
        model="kws",
        version=1,
        top=((seq % 12, 0.9), ((seq + 1) % 12, 0.05)),
        latency_us=800 + seq % 100,
        summary=InputSummary(0.1, 0.5, -1.0, 1.0, (0.25, 0.5, 0.125, 0.75)),
    )
    return Record(RecordId(device, boot, seq), 1_700_000_000_000 + seq, body).encode()


# -- cloud ----------------------------------------------------------------------------------------


class Cloud:
    """Ingest endpoint. ``mode``: ok | 500 | 429 | timeout (stores, then answers too late) |
    reset (drops the connection before reading). ``records`` maps id -> the line received.
    ``refuse``, when set, sees each request's records (parsed) and may answer ``(status,
    body)`` instead of taking them; ``posts`` counts requests by idempotency key."""

    def __init__(self, tls_context: ssl.SSLContext | None = None, hang_s: float = 3.0):
        self.tls_context, self.hang_s = tls_context, hang_s
        self.mode = "ok"
        self.records: dict[tuple[str, str, int], bytes] = {}
        self.received = 0  # records received in answered-or-not requests, duplicates included
        self.responses: Counter[str] = Counter()
        self.keys: set[str] = set()
        self.violations: list[str] = []
        self.refuse: Callable[[list[dict]], tuple[int, bytes] | None] | None = None
        self.posts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_context else "http"
        host = "localhost" if self.tls_context else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/ingest"

    def unique(self) -> set[tuple[str, str, int]]:
        with self._lock:
            return set(self.records)

    def _store(self, data: bytes, headers) -> int:
        """``data`` is the body after aiohttp undid its ``Content-Encoding: gzip``."""
        lines = data.split(b"\n")
        if lines[-1] != b"":
            self.violations.append("body does not end with a newline")
        lines = lines[:-1]
        if headers.get("X-Edgefleet-Records") != str(len(lines)):
            self.violations.append("record count header does not match the body")
        with self._lock:
            for line in lines:
                record = json.loads(line)
                key = (record["dev"], record["boot"], record["seq"])
                if key in self.records and self.records[key] != line:
                    self.violations.append(f"record {key} changed bytes")
                self.records.setdefault(key, line)
            self.received += len(lines)
        return len(lines)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        self.responses[mode] += 1
        key = request.headers.get("Idempotency-Key")
        if not key or request.headers.get("Content-Encoding") != "gzip":
            self.violations.append("missing Idempotency-Key or gzip encoding")
            return web.Response(status=400)
        if mode == "reset":
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            return web.Response(status=500)
        if mode == "500":
            return web.Response(status=500, text="internal error")
        if mode == "429":
            return web.Response(status=429, headers={"Retry-After": "1"})
        body = await request.read()
        self.posts[key] += 1
        refuse = self.refuse
        if refuse is not None:
            verdict = refuse([json.loads(line) for line in body.splitlines()])
            if verdict is not None:
                return web.Response(status=verdict[0], body=verdict[1])
        count = self._store(body, request.headers)
        self.keys.add(key)
        if mode == "timeout":
            await asyncio.sleep(self.hang_s)
            return web.Response(status=504)
        return web.json_response({"accepted": count})

    def start(self) -> Cloud:
        ready = threading.Event()

        async def setup() -> None:
            app = web.Application(client_max_size=512 * 1024 * 1024)
            app.router.add_post("/ingest", self._handle)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls_context)
            await site.start()
            self.port = self._runner.addresses[0][1]

        def main() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(setup())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- devices --------------------------------------------------------------------------------------


class Publisher:
    """A device that publishes telemetry batches (QoS 1) in a thread, one at a time, and
    re-publishes a batch until the broker acknowledged it, across broker restarts."""

    def __init__(
        self,
        broker,
        device: str,
        batch: int = 25,
        interval: float = 0.02,
        limit: int | None = None,
    ):
        self.port, self.device, self.batch, self.interval, self.limit = (
            broker.config.port,
            device,
            batch,
            interval,
            limit,
        )
        self.boot = os.urandom(8).hex()
        self.published: dict[tuple[str, str, int], bytes] = {}
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(*broker.login(device))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.topic = device_topic(PREFIX, device, "telemetry")
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publisher:
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        self._thread.start()
        return self

    def _send(self, payload: bytes) -> None:
        while True:
            self.connected.wait(30)
            info = self.client.publish(self.topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # the connection dropped since: send it again
                time.sleep(0.05)
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not info.is_published():
                if not self.connected.is_set():
                    break
                time.sleep(0.002)
            if info.is_published():
                return

    def _run(self) -> None:
        seq = 0
        try:
            while not self.stop_event.is_set() and (self.limit is None or seq < self.limit):
                count = self.batch if self.limit is None else min(self.batch, self.limit - seq)
                records = [make_record(self.device, self.boot, s) for s in range(seq, seq + count)]
                self._send(encode_batch(self.device, records))
                for s, raw in zip(range(seq, seq + count), records, strict=True):
                    self.published[(self.device, self.boot, s)] = raw
                seq += count
                if self.interval:
                    time.sleep(self.interval * random.uniform(0.5, 1.5))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which raises it
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def finish(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.device} did not finish publishing"
        assert self.error is None, f"{self.device} failed: {self.error!r}"
        self.client.disconnect()
        self.client.loop_stop()


# -- the gateway process -------------------------------------------------------------------------


def gateway_config(workdir: Path, broker, cloud_url: str | None, **overrides) -> dict:
    user, password = broker.login(f"gw-{workdir.name}", site=True)
    broker.login(command_user(user), site=True, password=password)
    config = {
        "gateway": {"site": "site1", "data_dir": workdir / "data"},
        "mqtt": {
            "url": broker.url,
            "username": user,
            "password": password,
            "reconnect_max_s": 1.0,
        },
        "uplink": (
            {
                "sink": "http",
                "url": cloud_url,
                "timeout_s": 1.0,
                "backoff_base_s": 0.05,
                "backoff_cap_s": 0.5,
                "batch_age_s": 0.1,
            }
            if cloud_url
            else {"sink": "dir", "batch_age_s": 0.1}
        ),
        "admin": {"listen": f"unix:{workdir / 'admin.sock'}"},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    }
    for table, values in overrides.items():
        config.setdefault(table, {}).update(values)
    return config


class Gateway:
    """``edgefleet gateway run`` as a child process."""

    def __init__(self, workdir: Path, config: dict):
        self.workdir, self.config = workdir, config
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gateway.toml"
        self.config_path.write_text(tomlconfig.dumps(config))
        self.proc: subprocess.Popen | None = None
        self.metrics_url = f"http://{config['metrics']['listen']}/metrics"
        self.starts = 0

    def start(self) -> Gateway:
        self.starts += 1
        log = open(self.workdir / f"gateway.{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(EDGEFLEET), "gateway", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def up() -> bool:
            assert self.proc.poll() is None, f"gateway exited:\n{self.log()}"
            return self.metric("edgefleet_gateway_mqtt_connected") == 1

        wait_for(up, 20, "the gateway to connect")
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def log_path(self) -> Path:
        """The log of the latest start."""
        return self.workdir / f"gateway.{self.starts}.log"

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:]
            for p in sorted(self.workdir.glob("gateway.*.log"))
        )

    def metrics(self) -> dict[str, float]:
        """Samples by name (labels joined in), or {} while the gateway does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return samples

    def metric(self, name: str) -> float | None:
        return self.metrics().get(name)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(EDGEFLEET), "gateway", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
