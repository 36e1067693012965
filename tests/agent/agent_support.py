"""Helpers for the agent tests: an agent started as a real process, a subscriber that collects
what reaches the broker (deduplicating telemetry by record id), and the spool read back from its
SQLite file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import paho.mqtt.client as mqtt

from edgefleet import tomlconfig
from protocol.telemetry import Record, decode_batch
from protocol.topics import Event, Status, parse_device_topic
from tests.conftest import GATEWAY_USER

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def write_config(path: Path, tables: dict[str, dict | list[dict]]) -> Path:
    """A list of tables is written as an array of tables (``[[name]]``)."""
    path.write_text(tomlconfig.dumps(tables))
    return path


def agent_config(
    tmp: Path, broker, model_path: Path, device: str = "dev1", url: str | None = None, **tables
) -> dict[str, dict]:
    """A config for a fast-moving agent logged in at ``broker`` as ``device`` (through ``url``
    when it goes another way, e.g. a relay); ``tables`` override or add keys per table."""
    user, password = broker.login(device)
    config = {
        "device": {"id": device, "site": "site1"},
        "mqtt": {
            "url": url or broker.url,
            "username": user,
            "password": password,
            "connect_timeout_s": 3.0,
            "reconnect_base_s": 0.05,
            "reconnect_max_s": 0.5,
        },
        "state": {"dir": tmp / f"state-{device}"},
        "model": {"path": model_path},
        "source": {"kind": "synthetic", "seed": 1},
        "inference": {"rate_hz": 400.0},
        "telemetry": {"batch_records": 50, "batch_age_s": 0.1, "status_interval_s": 0.5},
        "drift": {"window": 200},
    }
    for table, values in tables.items():
        config.setdefault(table, {}).update(values)
    return config


class AgentProcess:
    """``edgefleet agent run`` as a child process, its log in ``log_path``. Every instance is
    remembered in ``running`` so a failed test cannot leave an agent behind."""

    running: ClassVar[list[AgentProcess]] = []

    def __init__(self, config_path: Path, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = config_path.with_suffix(f".{int(time.monotonic() * 1e6)}.log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(config_path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})},
        )
        AgentProcess.running.append(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_logged(self, event: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode}):\n{self.log()}")
            return f'"event": "{event}"' in self.log()

        wait_for(seen, timeout, f"agent log event {event}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def terminate(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code


@dataclass
class Collected:
    records: dict[str, Record] = field(default_factory=dict)
    deliveries: int = 0
    statuses: dict[str, Status] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)
    samples: dict[str, Record] = field(default_factory=dict)
    arrivals: list[tuple[str, int]] = field(default_factory=list)  # (topic kind, highest seq)


class Collector:
    """A gateway-like subscriber with a persistent session (it survives broker restarts and
    receives what was queued for it), deduplicating telemetry by record id."""

    def __init__(self, port: int, client_id: str = "test-collector", tls=None):
        self.data = Collected()
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self._client.username_pw_set(*GATEWAY_USER)
        if tls is not None:  # (ca, cert, key) paths
            self._client.tls_set(ca_certs=str(tls[0]), certfile=str(tls[1]), keyfile=str(tls[2]))
        self._client.reconnect_delay_set(0.05, 0.5)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.connect("127.0.0.1", port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("collector could not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        client.subscribe("edgefleet/+/dev/+/+", qos=1)
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            _, device, kind = parse_device_topic(message.topic)
            with self._lock:
                if kind == "telemetry":
                    records = decode_batch(message.payload).records
                    for record in records:
                        self.data.records[record.id.key] = record
                        self.data.deliveries += 1
                    self.data.arrivals.append((kind, max(r.id.seq for r in records)))
                elif kind == "samples":
                    records = decode_batch(message.payload).records
                    for record in records:
                        self.data.samples[record.id.key] = record
                    self.data.arrivals.append((kind, max(r.id.seq for r in records)))
                elif kind == "status":
                    self.data.statuses[device] = Status.decode(message.payload)
                elif kind == "events":
                    self.data.events.append(Event.decode(message.payload))
        except ValueError as exc:
            with self._lock:
                self.data.bad[type(exc).__name__] += 1

    def seqs(self, device: str, boot: str) -> set[int]:
        with self._lock:
            return {
                r.id.seq
                for r in self.data.records.values()
                if r.id.device == device and r.id.boot == boot
            }

    def records(self) -> list[Record]:
        with self._lock:
            return list(self.data.records.values())

    def status(self, device: str) -> Status | None:
        with self._lock:
            return self.data.statuses.get(device)

    def samples(self) -> list[Record]:
        with self._lock:
            return list(self.data.samples.values())

    def events(self, kind: str) -> list[Event]:
        with self._lock:
            return [e for e in self.data.events if e.kind == kind]

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish as the gateway (QoS 1), returning once the broker acknowledged it."""
        self._client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass(frozen=True)
class SpoolFile:
    """The spool's durable state, read from its SQLite file after the agent stopped."""

    boot: str
    next_seq: int
    dropped: int
    produced: int
    bytes: int
    left: frozenset[int]  # sequence numbers of records still in the spool (current boot)
    integrity: str

    @classmethod
    def read(cls, path: Path) -> SpoolFile:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("BEGIN")  # one snapshot, even while the agent writes
            meta = dict(db.execute("SELECT key, value FROM meta"))
            left = frozenset(
                json.loads(body)["seq"] for (body,) in db.execute("SELECT body FROM records")
            )
            total = db.execute("SELECT coalesce(sum(size), 0) FROM records").fetchone()[0]
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()
        assert total == meta["bytes"], "spool byte counter disagrees with its rows"
        return cls(
            meta["boot"],
            meta["next_seq"],
            meta["dropped"],
            meta["produced"],
            meta["bytes"],
            left,
            integrity,
        )


def assert_exact_delivery(collector: Collector, spool: Path, device: str = "dev1") -> SpoolFile:
    """Every record the agent numbered was delivered, is still in its spool, or was counted
    as dropped: exactly, with no record both counted as dropped and delivered."""
    state = SpoolFile.read(spool)
    numbered = set(range(state.next_seq))

    def missing() -> set[int]:
        return numbered - collector.seqs(device, state.boot) - state.left

    deadline = time.monotonic() + 20  # records acknowledged by the broker still in transit
    while len(missing()) > state.dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = collector.seqs(device, state.boot)
    assert seen <= numbered, (
        f"records beyond the last sequence number: {sorted(seen - numbered)[:5]}"
    )
    lost = missing()
    assert len(lost) == state.dropped, (
        f"{len(lost)} records never delivered but {state.dropped} counted as dropped; "
        f"first missing {sorted(lost)[:5]}"
    )
    assert state.produced == state.next_seq
    return state


class FaultyLink:
    """A TCP proxy between the agent and the broker that can lose traffic on purpose.

    ``pass``: forward both ways. ``blackhole``: swallow both directions, keep connections open
    (a PUBLISH the agent sends is lost, its PUBACK never comes). ``deaf``: forward to the broker,
    swallow what comes back (the broker has the message, the agent never hears the PUBACK).
    ``slow``: forward both ways, but hold what comes back for ``delay`` seconds (a busy broker).
    Switching back to ``pass`` closes the connections that lived through the fault.
    """

    delay = 2.5

    def __init__(self, upstream_port: int):
        import socket

        self._upstream = upstream_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.mode = "pass"
        self._conns: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            if mode == "pass":
                for sock in self._conns:
                    sock.close()
                self._conns.clear()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, "down"), daemon=True
            ).start()

    def _pump(self, source, target, direction: str) -> None:
        try:
            while data := source.recv(65536):
                mode = self.mode
                if mode == "slow" and direction == "down":
                    time.sleep(self.delay)
                if mode in ("pass", "slow") or (mode == "deaf" and direction == "up"):
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._server.close()
        self.set_mode("pass")
