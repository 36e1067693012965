"""The simulated MCU's UART: a pty (``os.openpty``) or a loopback TCP socket, paced to a baud.

Every byte costs 10 bit times in each direction (8N1), so a host sees the throughput a real
line would give: what arrives is handed to the MCU no earlier than its last byte would have
crossed the wire (in slices of about 5 ms of line time, as a UART's DMA would hand them over),
and replies leave no faster than the line carries them. The line is full duplex: replies are
paced by a sender thread of their own, so an ACK on its way out never holds up the bytes coming
in. The MCU runs in one thread; ``power_cycle`` asks that thread to boot it again, as a power
switch would.

A power cut (``PowerLoss`` from the flash, armed through a ``FaultFile``) is a brown-out: the MCU
boots again through its bootloader at once and keeps serving; on a socket the connection drops,
as a USB serial adapter powered by the board would.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
import time
import tty

import structlog

from firmware_sim.fault_file import FaultFile
from firmware_sim.flash import PowerLoss
from firmware_sim.mcu import SimulatedMcu
from firmware_sim.smp_server import SmpMcu

log = structlog.get_logger()
BITS_PER_BYTE = 10
SLICE_SECONDS = 0.005
MAX_READ = 4096


class PacedLine:
    """One direction of the wire: when the bytes put on it now will have crossed it."""

    def __init__(self, baud: int | None) -> None:
        self._byte_time = BITS_PER_BYTE / baud if baud else 0.0
        self._free_at = 0.0

    def done_at(self, count: int, now: float) -> float:
        self._free_at = max(now, self._free_at) + count * self._byte_time
        return self._free_at


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def slice_size(baud: int | None) -> int:
    """Bytes the MCU is handed at a time: about ``SLICE_SECONDS`` of line time."""
    if not baud:
        return MAX_READ
    return max(64, min(MAX_READ, int(baud / BITS_PER_BYTE * SLICE_SECONDS)))


class Sender:
    """The MCU's transmit side: replies leave at the line rate from a thread of their own."""

    def __init__(self, fd: int, baud: int | None) -> None:
        self._fd = fd
        self._line = PacedLine(baud)
        self._queue: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        self.hung_up = False
        self._thread = threading.Thread(target=self._run, name="uart-tx", daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        """Queue ``data``; it is written when its last byte would have crossed the wire."""
        self._queue.put((self._line.done_at(len(data), time.monotonic()), data))

    def drain(self) -> None:
        """Wait until everything queued is on the wire."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            due, data = item
            _sleep_until(due)
            if not self.hung_up:
                try:
                    os.write(self._fd, data)
                except OSError:
                    self.hung_up = True
            self._queue.task_done()


class UartServer:
    """Serve one MCU on a pty or a TCP port until ``stop``; usable as a context manager."""

    def __init__(
        self,
        mcu: SimulatedMcu | SmpMcu,
        baud: int | None,
        kind: str = "pty",
        faults: FaultFile | None = None,
    ) -> None:
        if kind not in ("pty", "socket"):
            raise ValueError(f"unknown UART kind {kind!r}")
        self.mcu = mcu
        self.baud = baud
        self.faults = faults
        self._kind = kind
        self._stop = threading.Event()
        self._cycle = threading.Event()
        self._thread: threading.Thread | None = None
        if kind == "pty":
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            self.port = os.ttyname(self._slave)
        else:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.port = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> UartServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        target = self._serve_pty if self._kind == "pty" else self._serve_socket
        self._thread = threading.Thread(target=target, name="uart", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._kind == "pty":
            os.close(self._master)
            os.close(self._slave)
        else:
            self._listener.close()

    def power_cycle(self) -> None:
        """Boot the MCU again before it reads its next byte (its flash keeps its contents)."""
        self._cycle.set()

    def _boot(self) -> bool:
        """Power the MCU on; False when the power went during the boot (it then booted again)."""
        try:
            self.mcu.power_on()
        except PowerLoss as exc:
            self._brown_out(exc)
            return False
        return True

    def _brown_out(self, exc: PowerLoss) -> None:
        self.mcu.power_on()  # the cut is spent: this boot recovers whatever it interrupted
        if self.faults is not None:
            self.faults.cut()
        image = self.mcu.boot.image
        booted = "{}.{}.{}+{}".format(*image.version) if image else None
        log.warning("mcu.power_cut", reason=str(exc), booted=booted)

    def _poll_faults(self) -> None:
        if self.faults is not None:
            self.faults.poll()

    def _serve_pty(self) -> None:
        self._pump(self._master)

    def _serve_socket(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            self._poll_faults()
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                self._pump(conn.fileno())

    def _pump(self, fd: int) -> None:
        """Move bytes between ``fd`` and the MCU at the line rate until stop or hang-up."""
        sender = Sender(fd, self.baud)
        try:
            self._receive_loop(fd, sender)
        finally:
            sender.close()

    def _receive_loop(self, fd: int, sender: Sender) -> None:
        rx = PacedLine(self.baud)
        piece = slice_size(self.baud)
        while not self._stop.is_set():
            self._poll_faults()
            if self._cycle.is_set():
                self._cycle.clear()
                self._boot()
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(fd, MAX_READ)
            except OSError:
                data = b""
            if not data:
                if self._kind == "socket":
                    return
                time.sleep(0.05)
                continue
            arrived = time.monotonic()
            for start in range(0, len(data), piece):
                chunk = data[start : start + piece]
                _sleep_until(rx.done_at(len(chunk), arrived))
                if not self._hand_over(chunk, sender):
                    return

    def _hand_over(self, data: bytes, sender: Sender) -> bool:
        """Give ``data`` to the MCU and queue its reply; False when the connection must end."""
        try:
            reply = self.mcu.receive(data)
        except PowerLoss as exc:
            self._brown_out(exc)
            return self._kind != "socket"
        if reply:
            sender.send(reply)
        if self.mcu.reboot_pending:
            sender.drain()  # the answer to REBOOT leaves before the MCU goes down
            if not self._boot() and self._kind == "socket":
                return False
        return not (sender.hung_up and self._kind == "socket")
