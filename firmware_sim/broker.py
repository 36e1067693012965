"""A mosquitto broker for a site: its configuration (listener, persistence, per-device ACL,
optional TLS) and a process handle that can start, stop, kill -9 and restart it on the same port.

The ACL follows the MQTT contract: a device, identified by its client id (``%c``), may write only
its own telemetry/status/events topics and read only its own cmd topic; the gateway user may
read and write everything under the topic root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.processes import die_with_parent, terminate, wait_listening
from protocol.telemetry import MAX_PACKET_BYTES

DEVICE_WRITE_TOPICS = ("telemetry", "status", "events")
DEVICE_READ_TOPICS = ("cmd",)
AUTOSAVE_S = 30


class BrokerError(RuntimeError):
    """mosquitto could not be found, configured or started."""


@dataclass(frozen=True)
class BrokerTLS:
    """Server certificate and the CA that signed the clients' certificates (PEM files)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_client_cert: bool = True


@dataclass(frozen=True)
class BrokerConfig:
    workdir: Path
    port: int
    host: str = "127.0.0.1"
    topic_root: str = "edgefleet"
    users: dict[str, str] = field(default_factory=dict)  # username -> password (gateway users)
    allow_anonymous: bool = True
    tls: BrokerTLS | None = None
    max_queued_messages: int = 100_000


def find_mosquitto() -> Path:
    """The broker binary; Debian installs it in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def acl_text(config: BrokerConfig) -> str:
    root = config.topic_root
    lines = ["# devices: only their own topics (client id = device id)"]
    lines += [f"pattern write {root}/+/dev/%c/{name}" for name in DEVICE_WRITE_TOPICS]
    lines += [f"pattern read {root}/+/dev/%c/{name}" for name in DEVICE_READ_TOPICS]
    for user in sorted(config.users):
        lines += ["", f"user {user}", f"topic readwrite {root}/#"]
    return "\n".join(lines) + "\n"


def config_text(config: BrokerConfig) -> str:
    work = config.workdir
    lines = [
        f"listener {config.port} {config.host}",
        f"allow_anonymous {'true' if config.allow_anonymous else 'false'}",
        "persistence true",
        f"persistence_location {work / 'data'}/",
        # A graceful stop saves everything; autosave bounds what a crash loses. Each save
        # rewrites every queued message, so with a deep queue a short interval keeps the broker
        # writing instead of acknowledging.
        f"autosave_interval {AUTOSAVE_S}",
        f"max_queued_messages {config.max_queued_messages}",
        "max_inflight_messages 0",
        # Refused (the sender disconnected) as soon as its length is read, never buffered.
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"acl_file {work / 'acl'}",
        f"log_dest file {work / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        # mosquitto drops root for the 'mosquitto' user, who cannot write a private work dir;
        # a broker started by this class lives in such a dir (tests, simulator), so it stays.
        lines.append("user root")
    if config.users:
        lines.append(f"password_file {work / 'passwd'}")
    if config.tls:
        lines += [
            f"cafile {config.tls.ca_file}",
            f"certfile {config.tls.cert_file}",
            f"keyfile {config.tls.key_file}",
            f"require_certificate {'true' if config.tls.require_client_cert else 'false'}",
        ]
    return "\n".join(lines) + "\n"


def write_password_file(path: Path, users: dict[str, str]) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)


class Mosquitto:
    """A mosquitto process on a fixed port. ``kill()`` is a SIGKILL: unsaved state is lost."""

    def __init__(self, config: BrokerConfig):
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.config.tls else "mqtt"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        work = self.config.workdir
        (work / "data").mkdir(parents=True, exist_ok=True)
        (work / "acl").write_text(acl_text(self.config))
        if self.config.users:
            write_password_file(work / "passwd", self.config.users)
        conf = work / "mosquitto.conf"
        conf.write_text(config_text(self.config))
        for path in (work / "acl", work / "passwd"):
            if path.exists():
                path.chmod(0o600)
        self._proc = subprocess.Popen(
            [str(find_mosquitto()), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        why = wait_listening(self._proc, self.config.host, self.config.port, timeout)
        if why == "exited":
            err = self._proc.stderr.read().decode(errors="replace").strip()
            raise BrokerError(f"mosquitto exited at start: {err or self.log_tail()}")
        if why == "timeout":
            self.kill()
            raise BrokerError(f"mosquitto did not listen on port {self.config.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: mosquitto saves its persistence file."""
        if self._proc is None:
            return
        terminate(self._proc, timeout)
        self._close()

    def kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        log = self.config.workdir / "mosquitto.log"
        return "\n".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""

    def _close(self) -> None:
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
