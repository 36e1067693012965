"""Request/reply and windowed upload over a transport, with timeouts and retransmission.

Each request carries a fresh ``seq`` and is resent on timeout; replies with another ``seq`` are
stale and skipped, frames that fail their CRC are dropped. Upload keeps up to ``window`` DATA
frames in flight; the MCU's cumulative ACK moves the window, a duplicate ACK (a frame was lost)
or a timeout sends again from the last acknowledged offset (go-back-N). A compressed upload
(``send_deflate``) is the same window over the image's deflate blocks, in DEFLATE_DATA frames.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.mcu.errors import NoAnswer, Refusal, WrongProtocol
from agent.mcu.transport import Transport
from protocol.serial import messages as msg
from protocol.serial.deflate import deflate_blocks, first_block
from protocol.serial.errors import CodecError
from protocol.serial.frame import FrameDecoder, encode_frame

log = structlog.get_logger()
FRAME_OVERHEAD = 16
BOOT_POLL = 0.2


@dataclass(frozen=True)
class LinkConfig:
    timeout: float = 1.0
    retries: int = 4
    max_chunk: int = msg.MAX_CHUNK_LIMIT
    window: int = 8
    line_rate: float | None = None
    """Bytes per second on the wire (baud/10) when known: long windows wait longer."""
    deflate: bool = True
    """Offer compressed uploads in HELLO (used when the MCU offers them too)."""


@dataclass(frozen=True)
class UploadStats:
    start_offset: int
    bytes_sent: int
    """Payload bytes put on the wire, retransmissions included (compressed when ``deflate``)."""
    retransmits: int
    deflate: bool = False


class McuClient:
    def __init__(self, transport: Transport, config: LinkConfig | None = None) -> None:
        self._link = transport
        self.config = config or LinkConfig()
        self._decoder = FrameDecoder(msg.MAX_FRAME)
        self._seq = 0
        self._pending: list = []
        self._valid_frames = 0
        self._garbage = 0
        self.hello_reply: msg.HelloReply | None = None

    # -- framing -----------------------------------------------------------------------------

    def _send(self, message) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        self._link.write(encode_frame(msg.to_frame(message, self._seq)))
        return self._seq

    def _receive(self, deadline: float) -> tuple[int, object] | None:
        """The next decoded (seq, message) before ``deadline``, or None."""
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            data = self._link.read(remaining)
            for item in self._decoder.feed(data):
                if isinstance(item, CodecError):
                    self._garbage += 1
                    continue
                try:
                    self._pending.append((item.seq, msg.decode(item)))
                    self._valid_frames += 1
                except CodecError:
                    self._garbage += 1
            if data and not self._pending and 0 not in data:
                self._garbage += 1  # bytes without a delimiter: a console, say, not this protocol
        return self._pending.pop(0)

    def _silence(self, what: str) -> Exception:
        if self._garbage and not self._valid_frames:
            return WrongProtocol(f"no valid frame in reply to {what}")
        return NoAnswer(f"no reply to {what}")

    def request(self, message, timeout: float | None = None, retries: int | None = None):
        """Send ``message`` until its reply arrives; ERROR replies raise Refusal."""
        name = message.TYPE.name
        attempts = 1 + (self.config.retries if retries is None else retries)
        for _ in range(attempts):
            seq = self._send(message)
            deadline = time.monotonic() + (timeout or self.config.timeout)
            while (got := self._receive(deadline)) is not None:
                reply_seq, reply = got
                if reply_seq != seq:
                    continue
                if isinstance(reply, msg.Error):
                    raise Refusal(name, reply.code, reply.detail)
                return reply
            log.debug("mcu.retry", request=name)
        raise self._silence(name)

    # -- requests ----------------------------------------------------------------------------

    def hello(self, timeout: float | None = None, retries: int | None = None) -> msg.HelloReply:
        features = msg.Hello().features
        if not self.config.deflate:
            features &= ~msg.Feature.DEFLATE
        offer = msg.Hello(
            max_chunk=self.config.max_chunk, window=self.config.window, features=features
        )
        reply = self.request(offer, timeout, retries)
        if not isinstance(reply, msg.HelloReply):
            raise WrongProtocol(f"HELLO answered with {reply.TYPE.name}")
        if reply.version != msg.PROTOCOL_VERSION or reply.max_chunk > offer.max_chunk:
            raise WrongProtocol(f"device chose version {reply.version}, chunk {reply.max_chunk}")
        self.hello_reply = reply
        return reply

    def wait_for_boot(self, timeout: float) -> msg.HelloReply:
        """HELLO until the MCU answers (after a reboot, a swap can take a while)."""
        deadline = time.monotonic() + timeout
        attempt = min(BOOT_POLL, self.config.timeout)
        while True:
            try:
                return self.hello(attempt, retries=0)
            except NoAnswer:
                if time.monotonic() > deadline:
                    raise

    def info(self) -> msg.InfoReply:
        return self._expect(self.request(msg.Info()), msg.InfoReply)

    def begin(self, image: bytes, restart: bool = False, deflate: bool = False) -> msg.BeginReply:
        flags = msg.UploadFlag.RESTART if restart else msg.UploadFlag(0)
        if deflate:
            flags |= msg.UploadFlag.DEFLATE
        begin = msg.Begin(len(image), hashlib.sha256(image).digest(), flags)
        return self._expect(self.request(begin, self._slow_timeout()), msg.BeginReply)

    def finish(self) -> None:
        self._expect(self.request(msg.Finish(), self._slow_timeout()), msg.Ok)

    def test(self) -> None:
        self._expect(self.request(msg.Test(), self._slow_timeout()), msg.Ok)

    def confirm(self) -> None:
        self._expect(self.request(msg.Confirm()), msg.Ok)

    def revert(self) -> None:
        self._expect(self.request(msg.Revert()), msg.Ok)

    def reboot(self) -> None:
        """Ask for a reboot; the answer may be lost to the reboot itself, which is fine."""
        seq = self._send(msg.Reboot())
        deadline = time.monotonic() + self.config.timeout
        while (got := self._receive(deadline)) is not None:
            if got[0] == seq:
                break
        self._decoder = FrameDecoder(msg.MAX_FRAME)
        self._pending.clear()

    def infer(self, tensor: bytes = b"") -> msg.InferReply:
        return self._expect(self.request(msg.Infer(tensor), self._slow_timeout()), msg.InferReply)

    def _slow_timeout(self) -> float:
        return self.config.timeout * 5

    @staticmethod
    def _expect(reply, kind):
        if not isinstance(reply, kind):
            raise WrongProtocol(f"expected {kind.TYPE.name}, got {reply.TYPE.name}")
        return reply

    # -- upload ------------------------------------------------------------------------------

    def resume_point(self, image: bytes, deflate: bool = False) -> int:
        """BEGIN; keep what the MCU already holds if its hash matches our bytes."""
        reply = self.begin(image, deflate=deflate)
        if reply.offset > len(image):
            raise WrongProtocol(f"BEGIN answered with offset {reply.offset} past the image")
        if reply.offset and reply.prefix_sha256 == hashlib.sha256(image[: reply.offset]).digest():
            return reply.offset
        if reply.offset:
            log.info("mcu.resume_refused", offset=reply.offset)
            reply = self.begin(image, restart=True, deflate=deflate)
        return reply.offset

    def deflate_offered(self) -> bool:
        """Both sides offered compressed uploads in HELLO."""
        hello = self.hello_reply
        return hello is not None and bool(hello.features & msg.Feature.DEFLATE)

    def send_data(
        self, image: bytes, start: int, progress: Callable[[int], None] | None = None
    ) -> UploadStats:
        """Windowed DATA from ``start`` until the MCU acknowledged every byte."""
        sent, retransmits = self._send_window(image, start, msg.Data, progress)
        return UploadStats(start, sent, retransmits)

    def send_deflate(
        self,
        image: bytes,
        sector_size: int,
        start: int,
        progress: Callable[[int], None] | None = None,
        blocks: list[bytes] | None = None,
    ) -> UploadStats:
        """Windowed DEFLATE_DATA: the image's deflate blocks from the one at ``start`` on.

        ``start`` is BEGIN_REPLY's offset, a sector boundary; ``progress`` gets image bytes,
        counted a whole block at a time as the MCU acknowledges the block's last byte.
        """
        if start % sector_size and start != len(image):
            raise WrongProtocol(f"resume offset {start} is not at a {sector_size}-byte block")
        blocks = deflate_blocks(image, sector_size) if blocks is None else blocks
        rest = blocks[first_block(start, sector_size) :]
        ends = list(itertools.accumulate(len(block) for block in rest))

        def done(acked: int) -> None:
            whole = bisect.bisect_right(ends, acked)
            if progress:
                progress(min(start + whole * sector_size, len(image)))

        sent, retransmits = self._send_window(b"".join(rest), 0, msg.DeflateData, done)
        return UploadStats(start, sent, retransmits, deflate=True)

    def _send_window(
        self, stream: bytes, start: int, kind, progress: Callable[[int], None] | None
    ) -> tuple[int, int]:
        """Send ``stream`` from ``start`` as ``kind(offset, chunk)`` frames, ``window`` in
        flight, until all of it is acknowledged; returns bytes sent and retransmissions."""
        hello = self.hello_reply
        if hello is None:
            raise RuntimeError("upload before hello: chunk and window are not negotiated")
        chunk, window = hello.max_chunk, hello.window
        size = len(stream)
        base = sent_to = start
        resent_at: int | None = None
        sent = retransmits = tries = 0
        wait = self.config.timeout
        if self.config.line_rate:
            wait += 2 * window * (chunk + FRAME_OVERHEAD) / self.config.line_rate
        while base < size:
            while sent_to < size and sent_to - base < window * chunk:
                piece = stream[sent_to : sent_to + chunk]
                self._send(kind(sent_to, piece))
                sent += len(piece)
                sent_to += len(piece)
            acked = self._next_ack(time.monotonic() + wait, kind.TYPE.name)
            if acked is None:
                tries += 1
                if tries > self.config.retries:
                    raise self._silence(kind.TYPE.name)
                retransmits += 1
                sent_to = base
                continue
            if acked > base:
                base, tries = acked, 0
                if progress:
                    progress(base)
            elif acked == base and resent_at != base and sent_to > base:
                retransmits += 1
                resent_at = sent_to = base
        return sent, retransmits

    def _next_ack(self, deadline: float, request: str) -> int | None:
        while (got := self._receive(deadline)) is not None:
            _, reply = got
            if isinstance(reply, msg.Ack):
                return reply.offset
            if isinstance(reply, msg.Error):
                raise Refusal(request, reply.code, reply.detail)
        return None
