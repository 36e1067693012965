"""SMP packets on a console UART, framed as Zephyr's ``CONFIG_MCUMGR_TRANSPORT_UART`` frames them.

A packet travels as ``base64(length:u16be | packet | crc16:u16be)`` cut into lines: the first
line starts with 0x06 0x09, the following ones with 0x04 0x14, each ends with ``\\n``; the
length counts packet and CRC, the CRC is CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0) over
the packet. Lines without a marker are console text and are skipped.

Encoding is ``smp.packet``'s. Decoding is here because a server must bound what it holds before
it decodes: a line longer than ``max_line`` (the UART driver's line buffer) is dropped whole,
as Zephyr's driver drops it, and a packet whose length field exceeds ``max_packet`` (the
reassembly buffer) is dropped at its first line. A bad line or packet costs that packet only;
the next start marker begins a new one.
"""

from __future__ import annotations

import binascii
import struct

from smp import packet as smppacket

from protocol.serial.errors import CodecError

START = smppacket.START_DELIMITER
CONTINUE = smppacket.CONTINUE_DELIMITER
END = smppacket.END_DELIMITER
LENGTH = struct.Struct(">H")
CRC = struct.Struct(">H")
LINE_LENGTH = 128
"""Zephyr's default line buffer (``CONFIG_UART_MCUMGR_RX_BUF_SIZE``)."""
PACKET_BUFFER = 384
"""Zephyr's default reassembly buffer (``CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE``)."""


def crc16(data: bytes) -> int:
    return int(smppacket.crc16_func(data))


def encode(packet: bytes, line_length: int = LINE_LENGTH) -> bytes:
    """The lines that carry ``packet``, each at most ``line_length`` bytes with its newline."""
    return b"".join(smppacket.encode(packet, line_length=line_length))


class ConsoleDecoder:
    """Cuts a console byte stream into SMP packets; bad input yields ``CodecError`` items."""

    def __init__(self, max_line: int = LINE_LENGTH, max_packet: int = PACKET_BUFFER) -> None:
        self._max_line = max_line
        self._max_packet = max_packet
        self._line = bytearray()
        self._overlong = False
        self._expected: int | None = None  # length field of the packet being reassembled
        self._body = bytearray()

    def feed(self, data: bytes) -> list[bytes | CodecError]:
        """Packets (SMP header and body, CRC checked) completed by ``data``, in order."""
        out: list[bytes | CodecError] = []
        parts = data.split(END)
        for index, part in enumerate(parts):
            if not self._overlong:
                self._line += part
                if len(self._line) + len(END) > self._max_line:
                    self._overlong = True
                    del self._line[len(START) :]  # the marker says whether SMP lost a line
            if index == len(parts) - 1:
                break  # no newline after this part yet
            item = self._line_done(bytes(self._line))
            if item is not None:
                out.append(item)
            self._line.clear()
            self._overlong = False
        return out

    def _line_done(self, line: bytes) -> bytes | CodecError | None:
        if not self._overlong:
            return self._line_in(line)
        if line[: len(START)] in (START, CONTINUE):
            return self._abandon(f"line longer than {self._max_line} bytes")
        return None

    def _abandon(self, reason: str) -> CodecError:
        self._expected = None
        self._body.clear()
        return CodecError(reason)

    def _line_in(self, line: bytes) -> bytes | CodecError | None:
        marker, text = line[:2], line[2:]
        if marker == START:
            self._expected = None
            self._body.clear()
        elif marker != CONTINUE:
            return None  # console output, not SMP
        elif self._expected is None:
            return CodecError("continuation line without a packet")
        try:
            chunk = binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error as exc:
            return self._abandon(f"bad base64: {exc}")
        if marker == START:
            if len(chunk) < LENGTH.size:
                return self._abandon("first line shorter than the length field")
            (self._expected,) = LENGTH.unpack_from(chunk)
            if not CRC.size < self._expected <= self._max_packet - LENGTH.size:
                return self._abandon(f"packet length {self._expected} out of bounds")
            chunk = chunk[LENGTH.size :]
        self._body += chunk
        expected = self._expected
        if expected is None:  # not reached: a start line sets it, a continuation needs it
            return self._abandon("continuation line without a packet")
        if len(self._body) < expected:
            return None
        body = bytes(self._body)
        self._abandon("")
        if len(body) != expected:
            return CodecError(f"packet of {len(body)} bytes, its length field says {expected}")
        packet, (crc,) = body[: -CRC.size], CRC.unpack(body[-CRC.size :])
        if crc16(packet) != crc:
            return CodecError("CRC16 mismatch")
        return packet
