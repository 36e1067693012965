"""Children that must not outlive the process that started them (a simulated site's broker,
gateway and agents): however the parent dies, even by SIGKILL, the kernel kills them too."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: SIGKILL this child when the thread that started
    it ends (Linux ``PR_SET_PDEATHSIG``), so start such children from a long-lived thread."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_python(
    module: str,
    args: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    stdin: int = subprocess.DEVNULL,
    stdout: int = subprocess.DEVNULL,
    own_group: bool = False,
    nice: int = 0,
) -> subprocess.Popen:
    """``python -m MODULE ARGS`` with this Python, its stderr appended to ``log``, dying with
    its parent; ``own_group``: in a process group of its own (a power cut kills the group);
    ``nice``: that much lower a CPU priority, for it and its children."""

    def prepare() -> None:
        die_with_parent()
        if nice:
            os.nice(nice)

    with log.open("ab") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=stdin,
            stdout=stdout,
            stderr=stream,
            env=env,
            start_new_session=own_group,
            preexec_fn=prepare,
        )


def start_edgefleet(args: list[str], log: Path, **options) -> subprocess.Popen:
    """``edgefleet ARGS`` as ``start_python`` starts it."""
    return start_python("edgefleet.cli", args, log, **options)


def wait_listening(proc: subprocess.Popen, host: str, port: int, timeout: float) -> str | None:
    """Wait for a server child to accept connections on ``host:port``: None once it does, else
    why not (``"exited"`` or ``"timeout"``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return None
        except OSError:
            time.sleep(0.02)
    return "timeout"


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (a server saves its state), SIGKILL after ``timeout``; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
