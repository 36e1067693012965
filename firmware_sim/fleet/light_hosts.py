"""The simulator's end of the light host processes (``light_host.py``): started when the first
device needs one, devices spread over them round-robin, each host's answers read by a thread so
that a device's life can be waited on from synchronous code, as a process's can."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from pathlib import Path

import structlog

from agent.updater.faults import CUT_FILE_ENV, HOOK_ENV
from edgefleet.processes import start_python

HOST_EXIT_S = 30.0
log = structlog.get_logger()


class HostError(Exception):
    """A light host process is gone."""


class HostProcess:
    """One light host: send it control lines, collect its devices' exits."""

    def __init__(self, log_path: Path, nice: int) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        env.pop(HOOK_ENV, None)
        env.pop(CUT_FILE_ENV, None)
        self.log_path = log_path
        self.proc = start_python(
            "firmware_sim.fleet.light_host",
            [],
            log_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            nice=nice,
        )
        self._exits: dict[str, int] = {}
        self._running: set[str] = set()
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="light-host", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, device: str, config: Path, cut_file: Path) -> None:
        with self._changed:
            self._running.add(device)
        self.send("start", device, config=str(config), cut_file=str(cut_file))

    def send(self, op: str, device: str, **paths: str) -> None:
        line = json.dumps({"op": op, "device": device, **paths}) + "\n"
        with self._send_lock:
            try:
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise HostError(f"light host gone (see {self.log_path})") from None

    def take_exit(self, device: str) -> int | None:
        """The exit code of the device's last run if it ended since it was taken last."""
        with self._changed:
            return self._exits.pop(device, None)

    def wait_exit(self, device: str, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: device in self._exits, timeout)
            return self._exits.pop(device, None)

    def _read(self) -> None:
        for raw in self.proc.stdout:
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if "error" in data:
                log.warning("light_host_refused", error=data["error"])
            elif "device" in data:
                with self._changed:
                    self._running.discard(data["device"])
                    self._exits[data["device"]] = int(data["exit"])
                    self._changed.notify_all()
        code = self.proc.wait()  # the host is gone, and its devices with it
        with self._changed:
            for device in self._running:
                self._exits[device] = code
            self._running.clear()
            self._changed.notify_all()

    def close(self) -> None:
        """End of input: the host cuts what still runs and exits."""
        with self._send_lock, contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(HOST_EXIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(HOST_EXIT_S)


class LightHosts:
    """``count`` hosts (one per core), started lazily; device ``index`` lives on
    ``index % count``, and a host that died is started again for its next device."""

    def __init__(self, workdir: Path, count: int, nice: int) -> None:
        self.workdir, self.count, self.nice = workdir, max(count, 1), nice
        self.hosts: dict[int, HostProcess] = {}

    def host_log(self, index: int) -> Path:
        return self.workdir / f"host{index % self.count}.log"

    def host(self, index: int) -> HostProcess:
        slot = index % self.count
        host = self.hosts.get(slot)
        if host is None or not host.alive:
            self.workdir.mkdir(parents=True, exist_ok=True)
            host = HostProcess(self.host_log(index), self.nice)
            self.hosts[slot] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
