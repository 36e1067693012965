"""Byte transports to an MCU: a serial port (pyserial) or ``socket://host:port`` (TCP).

The client needs only ``write``, ``read(timeout)`` and ``close``; tests plug an in-process MCU
into the same three methods. ``open_transport`` picks one from the port name.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Protocol
from urllib.parse import urlsplit

from agent.mcu.errors import LinkLost, NoDevice

CONNECT_POLL = 0.05


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """Whatever arrived within ``timeout`` seconds (at least one byte), or b""."""

    def close(self) -> None: ...


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SerialTransport:
    """A pyserial port: a device path, a pty, or any pyserial URL such as ``socket://``.

    pyserial's own errors become ``NoDevice`` (cannot open) or ``LinkLost`` (failed in use).
    """

    def __init__(self, port: str, baud: int) -> None:
        import serial

        self._errors = (serial.SerialException, OSError)
        try:
            self._port = serial.serial_for_url(port, baudrate=baud, timeout=0)
        except (*self._errors, ValueError) as exc:
            raise NoDevice(_reason(exc)) from exc
        self.baud = baud

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except self._errors as exc:
            raise LinkLost(_reason(exc)) from exc

    def read(self, timeout: float) -> bytes:
        try:
            self._port.timeout = max(timeout, 0.0)
            first = self._port.read(1)
            if not first:
                return b""
            waiting = self._port.in_waiting
            return first + (self._port.read(waiting) if waiting else b"")
        except self._errors as exc:
            raise LinkLost(_reason(exc)) from exc

    def close(self) -> None:
        self._port.close()


class SocketTransport:
    """A UART exposed on TCP (an emulator's serial port, a serial-to-network bridge).

    A refused connection is tried again for ``connect_timeout`` seconds: the emulator or
    bridge may still be starting.

    Nagle's algorithm is off: frames are small and a request waits for its reply, so delaying
    a frame to coalesce it with the next one only adds latency.
    """

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0) -> None:
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._sock = socket.create_connection((host, port), timeout=connect_timeout)
                break
            except ConnectionRefusedError as exc:
                if time.monotonic() > deadline:
                    raise NoDevice(_reason(exc)) from exc
                time.sleep(CONNECT_POLL)
            except OSError as exc:
                raise NoDevice(_reason(exc)) from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.setblocking(False)

    def write(self, data: bytes) -> None:
        try:
            self._sock.setblocking(True)
            self._sock.sendall(data)
            self._sock.setblocking(False)
        except OSError as exc:
            raise LinkLost(_reason(exc)) from exc

    def read(self, timeout: float) -> bytes:
        try:
            ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
            if not ready:
                return b""
            data = self._sock.recv(65536)
        except OSError as exc:
            raise LinkLost(_reason(exc)) from exc
        if not data:
            raise LinkLost("connection closed by the device")
        return data

    def close(self) -> None:
        self._sock.close()


def open_transport(port: str, baud: int) -> Transport:
    """``socket://HOST:PORT`` for TCP, anything else is a serial device for pyserial."""
    if port.startswith("socket://"):
        parts = urlsplit(port)
        if not parts.hostname or not parts.port:
            raise NoDevice(f"{port} is not socket://HOST:PORT")
        return SocketTransport(parts.hostname, parts.port)
    return SerialTransport(port, baud)
