"""An MCU that speaks SMP (mcumgr), as Zephyr with MCUboot does, through ``smpclient``.

The same steps as the edgefleet protocol's flasher, in SMP's words: read the image states;
upload (``smpclient``'s upload, after one empty chunk at offset 0 that asks the MCU where it
stands, so an interrupted upload of the same image resumes from the offset it reports); mark
the image for test by its SHA-256 TLV; reset; wait for the MCU to answer again and check that
its active image is ours; confirm. SMP has no inference command, so there is no smoke test: a
board that boots the image and answers SMP confirms it.

The answers become the edgefleet protocol's ``InfoReply`` so that the worker and the updater
judge both kinds of MCU alike; a slot's ``sha256`` is then the image's SHA-256 TLV, which is
what ``runs`` compares. smpclient is asyncio; each call here runs its own event loop, in the
worker process or the ``edgefleet flash`` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable

import structlog

from agent.mcu.errors import LinkLost, NoAnswer, NoDevice, SmpRefusal, SwapFailed, WrongProtocol
from agent.mcu.flasher import FlashResult
from protocol.serial.messages import InfoReply, ModelState, SlotFlag, SlotInfo, SlotState
from protocol.serial.smp_image import image_hash

log = structlog.get_logger()
VERSION = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,5})(?:\.([0-9]{1,10}))?")
RECONNECT_POLL_S = 0.2
FIRST_CHUNK_TIMEOUT_S = 40.0  # the first chunk may wait for a slot erase


def runs(slot: SlotInfo, image: bytes) -> bool:
    """Whether ``slot`` (as ``query`` reports it) holds ``image``."""
    return slot.state == SlotState.VALID and slot.sha256 == image_hash(image)


def _version(text: str) -> tuple[int, int, int, int]:
    match = VERSION.fullmatch(text)
    if match is None:
        raise WrongProtocol(f"image version {text[:40]!r} is not MAJOR.MINOR.REVISION[.BUILD]")
    major, minor, revision, build = match.groups()
    return int(major), int(minor), int(revision), int(build or 0)


def to_info(images: list) -> InfoReply:
    """The image states as the edgefleet protocol's INFO (no geometry, no model over SMP)."""
    slots = {0: SlotInfo(), 1: SlotInfo()}
    for state in images:
        if state.image not in (None, 0) or state.slot not in slots:
            continue
        flags = SlotFlag(0)
        if state.active:
            flags |= SlotFlag.ACTIVE
        if state.confirmed and state.slot == 0:
            flags |= SlotFlag.CONFIRMED
        if state.pending:
            flags |= SlotFlag.PENDING_TEST
        digest = bytes(state.hash or b"")
        valid = SlotState.VALID if len(digest) == 32 else SlotState.INVALID
        slots[state.slot] = SlotInfo(valid, int(flags), _version(state.version), 0, digest)
    return InfoReply(0, 0, 0, 0, 0, ModelState.UNSUPPORTED, slots[0], slots[1])


class SmpSession:
    """One connection to an SMP server: requests with smpclient's errors made ``McuError``s."""

    def __init__(self, port: str, baud: int, timeout: float) -> None:
        from smpclient import SMPClient
        from smpclient.transport.serial import Auto, SMPSerialTransport

        self._port = port
        self._timeout = timeout
        self._client = SMPClient(SMPSerialTransport(Auto(), baudrate=baud), port, timeout)

    async def connect(self, limit_s: float) -> None:
        from serial import SerialException

        try:
            await self._client.connect(limit_s)
        except (TimeoutError, SerialException, OSError) as exc:
            raise NoDevice(f"cannot open {self._port}: {exc}") from exc

    async def close(self) -> None:
        await self._client.disconnect()

    async def request(self, request, limit_s: float | None = None):
        from smpclient.exceptions import SMPClientException
        from smpclient.generics import error
        from smpclient.transport import SMPTransportDisconnected

        name = type(request).__name__
        try:
            reply = await self._client.request(request, limit_s or self._timeout)
        except TimeoutError as exc:
            raise NoAnswer(f"no reply to {name}") from exc
        except SMPTransportDisconnected as exc:
            raise LinkLost(str(exc)) from exc
        except (SMPClientException, ValueError) as exc:
            raise WrongProtocol(f"bad reply to {name}: {str(exc)[:200]}") from exc
        if error(reply):
            raise SmpRefusal.from_reply(name, reply)
        return reply

    async def states(self) -> InfoReply:
        from smpclient.requests.image_management import ImageStatesRead

        return to_info((await self.request(ImageStatesRead())).images)

    async def upload(self, image: bytes, progress: Callable[[int], None] | None) -> int:
        """Upload from where the MCU stands; returns the offset it resumed from."""
        from smpclient.requests.image_management import ImageUploadWrite

        sha = hashlib.sha256(image).digest()
        ask = ImageUploadWrite(off=0, data=b"", image=0, len=len(image), sha=sha)
        start = (await self.request(ask, FIRST_CHUNK_TIMEOUT_S)).off or 0
        if not 0 <= start <= len(image):
            raise WrongProtocol(f"upload offset {start} outside the image")
        log.info("mcu.upload", size=len(image), resume_from=start, protocol="smp")
        from smpclient.exceptions import SMPUploadError
        from smpclient.transport import SMPTransportDisconnected

        try:
            async for offset in self._client.upload(image, first_timeout_s=FIRST_CHUNK_TIMEOUT_S):
                if progress:
                    progress(offset)
        except TimeoutError as exc:
            raise NoAnswer("no reply to an upload chunk") from exc
        except SMPTransportDisconnected as exc:
            raise LinkLost(str(exc)) from exc
        except SMPUploadError as exc:
            reply = exc.args[0] if exc.args else None
            if hasattr(reply, "header"):
                raise SmpRefusal.from_reply("ImageUploadWrite", reply) from exc
            raise SmpRefusal("ImageUploadWrite", "UPLOAD", str(exc)[:200]) from exc
        return start

    async def test(self, image: bytes) -> None:
        from smpclient.requests.image_management import ImageStatesWrite

        await self.request(ImageStatesWrite(hash=image_hash(image)))

    async def confirm(self) -> None:
        from smpclient.requests.image_management import ImageStatesWrite

        await self.request(ImageStatesWrite(confirm=True))

    async def reset(self) -> None:
        """Ask for a reset; its answer may be lost to the reset itself, which is fine."""
        from smpclient.requests.os_management import ResetWrite

        with contextlib.suppress(NoAnswer):
            await self.request(ResetWrite())
        await self.close()

    async def wait_for_boot(self, limit_s: float) -> InfoReply:
        """Open the port again and read the states until the MCU answers (a swap takes time)."""
        deadline = time.monotonic() + limit_s
        while True:
            try:
                await self.connect(min(1.0, self._timeout))
                return await self.states()
            except (NoDevice, NoAnswer, LinkLost):
                await self.close()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(RECONNECT_POLL_S)


async def _install(
    session: SmpSession,
    image: bytes,
    confirm: bool,
    progress: Callable[[int, int], None] | None,
    boot_timeout: float,
) -> FlashResult:
    info = await session.states()
    start, upload_seconds = len(image), 0.0
    if not runs(info.primary, image):
        pending = runs(info.secondary, image) and info.secondary.flags & SlotFlag.PENDING_TEST
        if not pending:
            began = time.monotonic()
            start = await session.upload(
                image, (lambda done: progress(done, len(image))) if progress else None
            )
            upload_seconds = time.monotonic() - began
            await session.test(image)
        await session.reset()
        info = await session.wait_for_boot(boot_timeout)
        if not runs(info.primary, image):
            raise SwapFailed(f"the MCU still runs version {info.primary.version_text}")
    if confirm:
        await session.confirm()
    confirmed = confirm or bool(info.primary.flags & SlotFlag.CONFIRMED)
    return FlashResult(
        device="smp",
        image_size=len(image),
        resumed_from=start,
        bytes_sent=len(image) - start,
        retransmits=0,
        upload_seconds=upload_seconds,
        version=info.primary.version_text,
        confirmed=confirmed,
        model_state=ModelState.UNSUPPORTED.name,
        inference_micros=None,
    )


async def _with_session(port, connect_s: float, work):
    session = SmpSession(port.port, port.baud, port.timeout)
    await session.connect(connect_s)
    try:
        return await work(session)
    finally:
        await session.close()


def install(
    port,
    image: bytes,
    *,
    confirm: bool = True,
    progress: Callable[[int, int], None] | None = None,
    boot_timeout: float = 30.0,
) -> FlashResult:
    """Upload (resuming), test, reset and, if ``confirm``, keep ``image`` (``port``: McuPort)."""

    async def work(session: SmpSession) -> FlashResult:
        return await _install(session, image, confirm, progress, boot_timeout)

    return asyncio.run(_with_session(port, port.timeout * 5, work))


def query(port) -> InfoReply:
    """The image states of the MCU at ``port`` (an ``McuPort``)."""
    return asyncio.run(_with_session(port, port.timeout * 5, SmpSession.states))
