"""An in-process SMP host for the simulated SMP MCU: requests from the ``smp`` package, framed
with ``smp.packet``, answered by ``SmpMcu.receive`` with no pty and no pacing."""

from __future__ import annotations

import hashlib
import os
import re
import select
import selectors
import shlex
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from smp import header as smphdr
from smp import image_management as smpimg
from smp import os_management as smpos
from smp import packet as smppacket

from firmware_sim.smp_server import SmpConfig, SmpMcu
from protocol.serial import smp_console
from protocol.serial.smp_image import image_hash
from tests.mcu.mcu_support import LAYOUT, Images

RESPONSES = {
    smpimg.ImageStatesReadRequest: smpimg.ImageStatesReadResponse,
    smpimg.ImageStatesWriteRequest: smpimg.ImageStatesWriteResponse,
    smpimg.ImageUploadWriteRequest: smpimg.ImageUploadWriteResponse,
    smpimg.ImageEraseRequest: smpimg.ImageEraseResponse,
    smpos.EchoWriteRequest: smpos.EchoWriteResponse,
    smpos.ResetWriteRequest: smpos.ResetWriteResponse,
    smpos.MCUMgrParametersReadRequest: smpos.MCUMgrParametersReadResponse,
}


def smp_config(images: Images, **overrides) -> SmpConfig:
    values = {"layout": LAYOUT, "verifier": images.verifier()}
    values.update(overrides)
    return SmpConfig(**values)


def parse_reply(wire: bytes) -> bytes:
    decoder = smppacket.decode()
    next(decoder)
    for line in wire.splitlines(keepends=True):
        try:
            decoder.send(line)
        except StopIteration as done:
            return done.value
    raise AssertionError(f"no whole reply in {wire[:60]!r}")


class SmpHost:
    """Sends one request at a time; a RESET reply boots the MCU again, as the UART does."""

    def __init__(self, mcu: SmpMcu) -> None:
        self.mcu = mcu

    def request(self, message):
        wire = self.mcu.receive(smp_console.encode(bytes(message)))
        if self.mcu.reboot_pending:
            self.mcu.power_on()
        packet = parse_reply(wire)
        head = smphdr.Header.loads(packet[:8])
        assert head.sequence == message.header.sequence
        reply_class = RESPONSES.get(type(message))
        try:
            if reply_class is None:
                raise ValueError("not a command these tests expect an answer to")
            return reply_class.loads(packet)
        except ValueError:
            if head.group_id == smphdr.GroupId.IMAGE_MANAGEMENT:
                try:
                    return smpimg.ImageManagementErrorV2.loads(packet)
                except ValueError:
                    pass
            errors = {smphdr.GroupId.OS_MANAGEMENT: smpos.OSManagementErrorV1}
            return errors.get(head.group_id, smpimg.ImageManagementErrorV1).loads(packet)

    def states(self) -> dict[int, smpimg.ImageState]:
        return {s.slot: s for s in self.request(smpimg.ImageStatesReadRequest()).images}

    def upload(self, image: bytes, chunk: int = 256, stop_after: int | None = None):
        """Upload as smpclient does: offset 0 with length and SHA-256, then from each reply's
        offset. Returns the offset of the MCU's first reply: ``chunk`` for a new upload (it took
        the first chunk), further on where it resumed one."""
        sha = hashlib.sha256(image).digest()
        reply = self.request(
            smpimg.ImageUploadWriteRequest(off=0, data=image[:chunk], len=len(image), sha=sha)
        )
        if not isinstance(reply, smpimg.ImageUploadWriteResponse):
            return reply  # refused: the error response
        first = reply.off
        while reply.off < len(image):
            if stop_after is not None and reply.off >= stop_after:
                break
            data = image[reply.off : reply.off + chunk]
            reply = self.request(smpimg.ImageUploadWriteRequest(off=reply.off, data=data))
        return first

    def test(self, image: bytes):
        return self.request(smpimg.ImageStatesWriteRequest(hash=image_hash(image)))

    def confirm(self):
        return self.request(smpimg.ImageStatesWriteRequest(confirm=True))

    def reset(self):
        return self.request(smpos.ResetWriteRequest())


EDGEFLEET = Path(sys.executable).with_name("edgefleet")
SMPMGR = Path(sys.executable).with_name("smpmgr")


class SmpSim:
    """``edgefleet mcu-sim --protocol smp`` as a child process on a pty, factory-programmed."""

    def __init__(self, workdir: Path, images: Images, baud: int, factory: str = "v1") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.fault_file = workdir / "power-cut"
        self.log_path = workdir / "mcu-sim.log"
        command = [
            str(EDGEFLEET), "mcu-sim", "--protocol", "smp",
            "--flash", str(workdir / "flash.bin"), "--key", str(images.key),
            "--factory", str(images.path(factory)), "--slot-sectors", str(LAYOUT.slot_sectors),
            "--baud", str(baud), "--fault-file", str(self.fault_file),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        self.port = self.proc.stdout.readline().decode().strip()
        assert self.port, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def smpmgr(port: str, *args: str, timeout: float = 3.0) -> subprocess.CompletedProcess:
    """The real ``smpmgr`` CLI against ``port`` (Zephyr's defaults: 128-byte lines)."""
    command = [str(SMPMGR), "--port", port, "--timeout", str(timeout), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


STATE = re.compile(
    r"slot=(\d+),\s+version='([^']*)',.*?hash=HashBytes\(\s+'([0-9A-F]+)'\s+\),"
    r".*?pending=(\w+),\s+confirmed=(\w+),\s+active=(\w+)",
    re.S,
)


def read_states(port: str) -> dict[int, dict]:
    """``smpmgr image state-read``, as ``{slot: {version, hash, pending, confirmed, active}}``."""
    done = smpmgr(port, "image", "state-read")
    assert done.returncode == 0, done.stdout + done.stderr
    return parse_states(done.stdout)


def parse_states(text: str) -> dict[int, dict]:
    """The image states that ``smpmgr image state-read`` printed in ``text``."""
    return {
        int(slot): {
            "version": version,
            "hash": bytes.fromhex(digest),
            "pending": pending == "True",
            "confirmed": confirmed == "True",
            "active": active == "True",
        }
        for slot, version, digest, pending, confirmed, active in STATE.findall(text)
    }


class SmpmgrShell:
    """One ``smpmgr interactive`` process for many commands: the real CLI, without paying its
    start (3 to 4 s, mostly building the ``smp`` package's models) for every command. Each
    command opens the port again, as a separate ``smpmgr`` run does."""

    PROMPT = b"smpmgr >"

    def __init__(self, port: str, timeout: float = 3.0) -> None:
        self.port = port
        self.timeout = timeout
        self._proc = subprocess.Popen(
            [str(SMPMGR), "interactive"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._pending = b""
        self._read_to_prompt(60)

    def _read_to_prompt(self, limit_s: float) -> str:
        deadline = time.monotonic() + limit_s
        fd = self._proc.stdout.fileno()
        while self.PROMPT not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"smpmgr gave no prompt: {self._pending[-300:]!r}")
            data = os.read(fd, 65536)
            if not data:
                raise EOFError(f"smpmgr exited: {self._pending[-300:]!r}")
            self._pending += data
        out, _, self._pending = self._pending.partition(self.PROMPT)
        return out.decode(errors="replace")

    def run(self, *args: str) -> str:
        """What ``smpmgr --port PORT --timeout T ARGS...`` printed."""
        line = shlex.join(["--port", self.port, "--timeout", str(self.timeout), *args])
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()
        return self._read_to_prompt(120)

    def states(self) -> dict[int, dict]:
        return parse_states(self.run("image", "state-read"))

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """Connect once QEMU listens (it starts listening a moment after it starts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, port), timeout=1)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class PtyRelay:
    """A pty whose other end is QEMU's UART socket, for clients that open serial devices only
    (smpclient): bytes are copied both ways by a thread until ``close``. QEMU's own ``-serial
    pty`` drops output while no client holds the pty, so the harness keeps a socket.

    ``target`` is the socket's address, or a callable that returns it: then the relay outlives
    QEMU. When the socket closes (a power cut, a power cycle) it connects again to the address
    the callable gives, and drops what the host writes meanwhile, as the UART of a board
    without power does; the pty's path stays the same."""

    def __init__(self, target: str | Callable[[], str]) -> None:
        self._address = target if callable(target) else lambda: target
        self._reattach = callable(target)
        host, port = self._split()
        self._sock = _connect(host, port)
        self._sock.setblocking(False)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _split(self) -> tuple[str, int]:
        host, port = self._address().removeprefix("socket://").rsplit(":", 1)
        return host, int(port)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._copy()
            self._sock.close()
            if not self._reattach or not self._connect_again():
                return

    def _copy(self) -> None:
        """Copy both ways until the socket closes or ``close`` is called."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._master, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    try:
                        if key.fileobj is self._sock:
                            data = self._sock.recv(4096)
                            if not data:
                                return
                            os.write(self._master, data)
                        else:
                            self._sock.sendall(os.read(self._master, 4096))
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return

    def _connect_again(self) -> bool:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if ready:
                os.read(self._master, 4096)  # the host talks to a board without power
            try:
                self._sock = socket.create_connection(self._split(), timeout=1)
            except OSError:
                continue
            self._sock.setblocking(False)
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        os.close(self._master)
        os.close(self._slave)


def assert_trial_then_confirm(port: str, images: Images) -> None:
    """v2 on trial after ``edgefleet flash``: the next reset would revert it, only confirming
    is left, confirming sends nothing again, and v1 is then a downgrade."""
    from agent.mcu.host import McuPort, open_device
    from agent.mcu.worker import downgrade, kept_version

    device = open_device(McuPort(port, protocol="smp"))
    info = device.query()
    assert device.runs(info.primary, images.v2)
    assert kept_version(info) == "1.0.0+0"  # the next reset reverts an unconfirmed image
    assert downgrade(info, images.v2, "2.0.0+0", device.runs) is None  # only confirm it
    confirmed = device.install(images.v2, confirm=True)
    assert confirmed.confirmed and confirmed.bytes_sent == 0
    assert kept_version(device.query()) == "2.0.0+0"
    assert downgrade(device.query(), images.v1, "1.0.0+0", device.runs).startswith("downgrade")
