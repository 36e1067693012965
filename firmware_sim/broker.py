"""A mosquitto broker for a site: its configuration (listener, persistence, per-device ACL,
optional TLS) and a process handle that can start, stop, kill -9 and restart it on the same port.

The ACL follows the MQTT contract (``protocol.broker_auth``): every client logs in, its client
id is its user name, a device may write only its own telemetry/samples/status/events topics and read
only its own cmd topic, and site users may read and write everything under the topic root.
Logins added while the broker runs take effect through a reload (SIGHUP).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.fsio import atomic_write_bytes
from edgefleet.processes import die_with_parent, terminate, wait_listening
from protocol import broker_auth
from protocol.telemetry import MAX_PACKET_BYTES

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
    users: dict[str, str] = field(default_factory=dict)  # site users (gateway): name -> password
    devices: dict[str, str] = field(default_factory=dict)  # device id -> password
    tls: BrokerTLS | None = None
    max_queued_messages: int = 100_000


def find_mosquitto() -> Path:
    """The broker binary; Debian installs it in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
    return Path(found)


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a server that binds it later. Chosen below the kernel's ephemeral
    range, which outgoing connections and port-0 binds draw from, so none of those can take it
    in the meantime (only another chooser can, and the random pick makes that rare)."""
    try:
        low = int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    choices = random.Random().sample(range(10_000, max(low, 10_001)), 64)
    for port in choices:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # every pick was taken: fall back to the kernel's choice
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def config_text(config: BrokerConfig) -> str:
    """mosquitto.conf: no anonymous clients, client id = user name, TLS off loopback."""
    work = config.workdir
    if config.tls is None and not _loopback(config.host):
        raise BrokerError(f"a listener on {config.host} (not loopback) needs TLS")
    lines = [
        f"listener {config.port} {config.host}",
        "allow_anonymous false",
        "use_username_as_clientid true",
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
    lines.append(f"password_file {work / 'passwd'}")
    if config.tls:
        lines += [
            f"cafile {config.tls.ca_file}",
            f"certfile {config.tls.cert_file}",
            f"keyfile {config.tls.key_file}",
            f"require_certificate {'true' if config.tls.require_client_cert else 'false'}",
        ]
        if config.tls.require_client_cert:  # the certificate's common name is the user name
            lines.append("use_identity_as_username true")
    return "\n".join(lines) + "\n"


def catches_sighup(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGHUP (its ``SigCgt`` mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = [line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")]
    return bool(caught) and bool(int(caught[0], 16) >> (signal.SIGHUP - 1) & 1)


def probe_login(host: str, port: int, user: str, password: str, timeout: float = 5.0) -> int:
    """The CONNACK return code for an MQTT 3.1.1 login (0: accepted, 5: not authorized)."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return len(raw).to_bytes(2, "big") + raw

    body = text("MQTT") + bytes([4, 0xC2, 0, 10]) + text(user) + text(user) + text(password)
    with socket.create_connection((host, port), timeout) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        answer = b""
        while len(answer) < 4 and (chunk := sock.recv(4 - len(answer))):
            answer += chunk
        if len(answer) < 4 or answer[0] != 0x20:
            return -1
        sock.sendall(b"\xe0\x00")
        return answer[3]


class Mosquitto:
    """A mosquitto process on a fixed port. ``kill()`` is a SIGKILL: unsaved state is lost."""

    def __init__(self, config: BrokerConfig):
        self.config = config
        self.users, self.devices = dict(config.users), dict(config.devices)
        self._proc: subprocess.Popen[bytes] | None = None

    def login(
        self, name: str, site: bool = False, password: str | None = None, timeout: float = 10.0
    ) -> tuple[str, str]:
        """``(user, password)`` for a device (or a site user), created on first use; a running
        broker reloads and is asked until it accepts the new login (TLS listeners take
        certificates, not passwords, so there only the ACL is reloaded)."""
        logins = self.users if site else self.devices
        if name in logins:
            return name, logins[name]
        logins[name] = password or broker_auth.new_password()
        self._write_logins()
        if self.running:
            self._reload()
            if self.config.tls is None:
                self._wait_accepted(name, logins[name], timeout)
            else:  # nothing to log in with: give the reload its time, then the listener
                time.sleep(0.5)
                why = wait_listening(self._proc, self.config.host, self.config.port, timeout)
                if why is not None:
                    raise BrokerError(f"mosquitto did not listen again after a reload ({why})")
        return name, logins[name]

    def _reload(self, timeout: float = 10.0) -> None:
        """SIGHUP, once mosquitto handles it: it listens before it installs its signal handlers,
        and a SIGHUP in between (a busy machine widens that window) would end the process."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while not catches_sighup(self._proc.pid):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise BrokerError("mosquitto never became ready to reload")
            time.sleep(0.01)
        self._proc.send_signal(signal.SIGHUP)

    def _wait_accepted(self, user: str, password: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while probe_login(self.config.host, self.config.port, user, password) != 0:
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not take the login {user} in {timeout}s")
            time.sleep(0.02)

    def _write_logins(self) -> None:
        work = self.config.workdir
        acl = broker_auth.acl_text(self.config.topic_root, list(self.users))
        atomic_write_bytes(work / "acl", acl.encode(), mode=0o600)
        entries = {**self.devices, **self.users}
        lines = [broker_auth.password_line(user, pw) for user, pw in entries.items()]
        atomic_write_bytes(work / "passwd", "".join(f"{line}\n" for line in lines).encode(), 0o600)

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.config.tls else "mqtt"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The running process's id, for the simulator's CPU and memory sampler."""
        return self._proc.pid if self.running else None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        work = self.config.workdir
        (work / "data").mkdir(parents=True, exist_ok=True)
        self._write_logins()
        conf = work / "mosquitto.conf"
        conf.write_text(config_text(self.config))
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
