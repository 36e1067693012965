"""The simulated MCU as a Zephyr application with an SMP server (mcumgr) on its console UART.

Same flash, bootloader and upload store as ``firmware_sim.mcu``; only the application's
protocol differs. It answers the image group (state read, state write: test or confirm by hash,
upload, erase) and the OS group (echo, reset, MCUmgr parameters) as Zephyr's handlers do, with
messages decoded and encoded by the ``smp`` package and framed by ``protocol.serial.smp_console``
with Zephyr's default line (128 bytes) and reassembly buffer (384 bytes, 4 of them).

Where it is stricter than Zephyr, a host learns it early: a test is refused unless the secondary
image verifies (hash and Ed25519 signature by a trusted key: the bootloader would refuse to swap
it anyway), and confirming the secondary image without a test boot (a permanent swap) is
refused. Where it does more: the upload record and finished sectors live in flash, so an upload
that a power cut interrupted resumes when the host begins it again with the same length and
SHA-256, from the offset the MCU reports.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import structlog
from pydantic import ValidationError
from smp import error as smperr
from smp import header as smphdr
from smp import image_management as smpimg
from smp import os_management as smpos
from smp.exceptions import SMPException

from firmware_sim import bootloader
from firmware_sim.bootloader import Verifier
from firmware_sim.flash import Flash
from firmware_sim.layout import Layout, Slot, SwapType
from firmware_sim.mcuboot_image import ImageError, SignatureError
from firmware_sim.refusal import Refused
from firmware_sim.upload import UploadStore
from protocol.mcu_image import McuImageError, parse_image
from protocol.serial import smp_console
from protocol.serial.errors import CodecError
from protocol.serial.messages import ErrorCode
from protocol.serial.smp_image import HASH_SIZE, image_hash, version_text

log = structlog.get_logger()
ERR = smpimg.IMG_MGMT_ERR
OP = smphdr.OP
IMG = smphdr.GroupId.IMAGE_MANAGEMENT
OS = smphdr.GroupId.OS_MANAGEMENT
ImgCmd = smphdr.CommandId.ImageManagement
OsCmd = smphdr.CommandId.OSManagement

# (op, group, command) -> the request's class, its response's class, the handler's name.
COMMANDS = {
    (OP.READ, IMG, ImgCmd.STATE): (
        smpimg.ImageStatesReadRequest, smpimg.ImageStatesReadResponse, "_state_read"
    ),
    (OP.WRITE, IMG, ImgCmd.STATE): (
        smpimg.ImageStatesWriteRequest, smpimg.ImageStatesWriteResponse, "_state_write"
    ),
    (OP.WRITE, IMG, ImgCmd.UPLOAD): (
        smpimg.ImageUploadWriteRequest, smpimg.ImageUploadWriteResponse, "_upload"
    ),
    (OP.WRITE, IMG, ImgCmd.ERASE): (
        smpimg.ImageEraseRequest, smpimg.ImageEraseResponse, "_erase"
    ),
    (OP.WRITE, OS, OsCmd.ECHO): (smpos.EchoWriteRequest, smpos.EchoWriteResponse, "_echo"),
    (OP.WRITE, OS, OsCmd.RESET): (smpos.ResetWriteRequest, smpos.ResetWriteResponse, "_reset"),
    (OP.READ, OS, OsCmd.MCUMGR_PARAMETERS): (
        smpos.MCUMgrParametersReadRequest, smpos.MCUMgrParametersReadResponse, "_params"
    ),
}  # fmt: skip
# What the upload store's refusals are in the image group's codes.
UPLOAD_ERRORS = {
    ErrorCode.TOO_LARGE: ERR.INVALID_IMAGE_TOO_LARGE,
    ErrorCode.BAD_REQUEST: ERR.INVALID_IMAGE_DATA_OVERRUN,
}


@dataclass(frozen=True)
class SmpConfig:
    layout: Layout = field(default_factory=Layout)
    verifier: Verifier = field(default_factory=Verifier)
    line_length: int = smp_console.LINE_LENGTH
    buf_size: int = smp_console.PACKET_BUFFER
    buf_count: int = 4


class GroupError(Exception):
    """A request the image group refuses with one of its codes (SMP version 2 ``err``)."""

    def __init__(self, code: ERR, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class MgmtError(Exception):
    """A request refused with a general code (``rc``), such as an unknown command."""

    def __init__(self, code: smperr.MGMT_ERR, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@functools.cache
def _response_class(base: type, op: OP, group: int, command: int) -> type:
    """``base`` (an error response) bound to the header fields of the request it answers."""
    return type(base.__name__, (base,), {"_OP": op, "_GROUP_ID": group, "_COMMAND_ID": command})


@dataclass
class _Upload:
    """The upload in progress, in RAM as in Zephyr: lost at reset, found again in flash."""

    size: int
    sha: bytes | None
    offset: int


class SmpMcu:
    """Bytes in, bytes out, like ``SimulatedMcu``; ``uart.UartServer`` serves either."""

    def __init__(self, flash: Flash, config: SmpConfig) -> None:
        self.flash = flash
        self.config = config
        self.dropped_packets = 0
        self.upload_bytes = 0  # image bytes written, for tests that check a resume
        self.power_on()

    def power_on(self) -> None:
        """Run the bootloader, then start the application on the primary image."""
        self.reboot_pending = False
        layout = self.config.layout
        self._decoder = smp_console.ConsoleDecoder(self.config.line_length, self.config.buf_size)
        self._session: _Upload | None = None
        self.boot = bootloader.boot(self.flash, layout, self.config.verifier)
        self.upload = UploadStore(self.flash, layout)

    def receive(self, data: bytes) -> bytes:
        """Answer every complete SMP packet in ``data``; returns the reply bytes."""
        out = bytearray()
        for item in self._decoder.feed(data):
            if self.reboot_pending:
                break
            if isinstance(item, CodecError):
                self.dropped_packets += 1
                log.debug("mcu.smp_packet_dropped", reason=str(item))
                continue
            reply = self._reply(item)
            if reply is not None:
                out += smp_console.encode(reply, self.config.line_length)
        return bytes(out)

    # -- dispatch ------------------------------------------------------------------------

    def _reply(self, packet: bytes) -> bytes | None:
        try:
            head = smphdr.Header.loads(packet[: smphdr.Header.SIZE])
        except (AssertionError, ValueError) as exc:
            log.debug("mcu.smp_bad_header", reason=str(exc))
            return None  # nothing trustworthy to answer to: Zephyr drops it too
        op = OP.READ_RSP if head.op == OP.READ else OP.WRITE_RSP
        key = (head.op, head.group_id, head.command_id)
        try:
            command = COMMANDS.get(key)
            if command is None:
                raise MgmtError(smperr.MGMT_ERR.ENOTSUP, "no such command")
            request_class, reply_class, name = command
            if head.length != len(packet) - smphdr.Header.SIZE:
                raise MgmtError(smperr.MGMT_ERR.EINVAL, "length field does not match")
            try:
                request = request_class.loads(packet)
            except (ValidationError, SMPException, ValueError, TypeError) as exc:
                raise MgmtError(smperr.MGMT_ERR.EINVAL, f"bad request body: {exc}") from exc
            fields = getattr(self, name)(request)
        except GroupError as exc:
            log.info("mcu.smp_refused", code=exc.code.name, detail=str(exc))
            base = smpimg.ImageManagementErrorV2
            reply_class = _response_class(base, op, head.group_id, head.command_id)
            fields = {"err": {"group": head.group_id, "rc": exc.code}}
        except MgmtError as exc:
            log.info("mcu.smp_refused", code=exc.code.name, detail=str(exc))
            reply_class = _response_class(smperr.ErrorV1, op, head.group_id, head.command_id)
            fields = {"rc": exc.code}
        return bytes(reply_class(version=head.version, sequence=head.sequence, **fields))

    # -- OS group ------------------------------------------------------------------------

    def _echo(self, request: smpos.EchoWriteRequest) -> dict:
        return {"r": request.d}

    def _reset(self, _: smpos.ResetWriteRequest) -> dict:
        self.reboot_pending = True
        return {}

    def _params(self, _: object) -> dict:
        return {"buf_size": self.config.buf_size, "buf_count": self.config.buf_count}

    # -- image group: state --------------------------------------------------------------

    def _next_boot(self) -> str:
        """Zephyr's next-boot type: ``normal``, ``test`` (a test swap is pending),
        ``revert`` (the running image is on trial) or ``permanent`` (a revert is requested)."""
        trailers = bootloader.read_trailers(self.flash, self.config.layout)
        if trailers.on_trial:
            return "revert"
        if trailers.request == SwapType.TEST:
            return "test"
        if trailers.request == SwapType.REVERT:
            return "permanent"
        return "normal"

    def _slot_image(self, slot: Slot) -> tuple[bytes, tuple[int, int, int, int]] | None:
        """The slot's SHA-256 TLV and version, when it holds a readable image header."""
        data = bootloader.slot_bytes(self.flash, self.config.layout, slot)
        try:
            return image_hash(data), parse_image(data).version
        except McuImageError:
            return None

    def _states(self) -> list[smpimg.ImageState]:
        kind = self._next_boot()
        flags = {
            Slot.PRIMARY: {"active": True, "confirmed": kind != "revert"},
            Slot.SECONDARY: {
                "pending": kind in ("test", "permanent"),
                "permanent": kind == "permanent",
                "confirmed": kind == "revert",
            },
        }
        states = []
        for slot in (Slot.PRIMARY, Slot.SECONDARY):
            found = self._slot_image(slot)
            if found is None:
                continue
            digest, version = found
            marks = {"bootable": True, "pending": False, "confirmed": False, "active": False}
            marks |= {"permanent": False} | flags[slot]
            states.append(
                smpimg.ImageState(
                    slot=int(slot), version=version_text(version), hash=digest, **marks
                )
            )
        return states

    def _state_read(self, _: object) -> dict:
        return {"images": self._states(), "splitStatus": 0}

    def _state_write(self, request: smpimg.ImageStatesWriteRequest) -> dict:
        """Test or confirm, with the rules of Zephyr's ``img_mgmt_set_next_boot_slot``."""
        slot = self._slot_by_hash(request.hash, request.confirm)
        kind, confirm = self._next_boot(), request.confirm
        if not confirm and slot == Slot.PRIMARY:
            raise GroupError(ERR.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED, "the running image")
        if kind == "test":
            if confirm:
                raise GroupError(ERR.IMAGE_ALREADY_PENDING, "a test swap is pending")
        elif kind == "revert":
            if not confirm:
                raise GroupError(ERR.IMAGE_ALREADY_PENDING, "the running image is on trial")
            if slot == Slot.PRIMARY:
                bootloader.confirm(self.flash, self.config.layout)
        elif kind == "permanent":
            if slot == Slot.PRIMARY or not confirm:
                raise GroupError(ERR.IMAGE_ALREADY_PENDING, "a revert is pending")
        elif confirm and slot == Slot.SECONDARY:
            raise GroupError(
                ERR.IMAGE_CONFIRMATION_DENIED, "no permanent swap: test the image, then confirm"
            )
        elif not confirm:
            self._request_test()
        return {"images": self._states(), "splitStatus": 0}

    def _slot_by_hash(self, digest: bytes | None, confirm: bool) -> Slot:
        if not digest:
            if confirm:
                return Slot.PRIMARY
            raise GroupError(ERR.INVALID_HASH, "a test needs the image's hash")
        if len(digest) != HASH_SIZE:
            raise GroupError(ERR.INVALID_HASH, f"hash of {len(digest)} bytes")
        for slot in (Slot.PRIMARY, Slot.SECONDARY):
            found = self._slot_image(slot)
            if found is not None and found[0] == digest:
                return slot
        raise GroupError(ERR.HASH_NOT_FOUND, "no image with this hash")

    def _request_test(self) -> None:
        layout = self.config.layout
        try:
            bootloader.check_slot(self.flash, layout, Slot.SECONDARY, self.config.verifier)
        except SignatureError as exc:
            raise GroupError(ERR.INVALID_TLV, f"signature: {exc}") from exc
        except ImageError as exc:
            raise GroupError(ERR.INVALID_IMAGE_HEADER, f"secondary slot: {exc}") from exc
        bootloader.request_test(self.flash, layout)

    # -- image group: upload and erase ---------------------------------------------------

    def _slot_in_use(self) -> str | None:
        """Why the secondary slot must not be written now (Zephyr's ``img_mgmt_slot_in_use``)."""
        kind = self._next_boot()
        if kind == "revert":
            return "it holds the image to revert to: confirm the running image first"
        if kind in ("test", "permanent"):
            return "a swap to it is pending"
        return None

    def _upload(self, request: smpimg.ImageUploadWriteRequest) -> dict:
        if request.image not in (None, 0):
            raise GroupError(ERR.INVALID_SLOT, f"image {request.image}: this MCU has image 0")
        if request.off == 0:
            self._begin(request)
        session = self._session
        if session is None:
            raise GroupError(ERR.INVALID_LENGTH, "no upload in progress: begin at offset 0")
        if request.off != session.offset or not request.data:
            return {"off": session.offset}
        if request.off + len(request.data) > session.size:
            raise GroupError(ERR.INVALID_IMAGE_DATA_OVERRUN, "data past the announced length")
        try:
            session.offset = self.upload.accept(request.off, request.data)
        except Refused as exc:
            raise GroupError(UPLOAD_ERRORS.get(exc.code, ERR.UNKNOWN), exc.detail) from exc
        self.upload_bytes += len(request.data)
        if session.offset < session.size:
            return {"off": session.offset}
        self._session = None
        held = bootloader.slot_bytes(self.flash, self.config.layout, Slot.SECONDARY)
        if session.sha is None:
            return {"off": session.offset}
        match = hashlib.sha256(held[: session.size]).digest() == session.sha
        log.info("mcu.smp_upload_done", size=session.size, match=match)
        return {"off": session.offset, "match": match}

    def _begin(self, request: smpimg.ImageUploadWriteRequest) -> None:
        """Offset 0: start, or resume what flash holds of the same length and SHA-256."""
        if request.len is None:
            if self._session is not None:
                return  # Zephyr takes offset 0 without a length as data of the current upload
            raise GroupError(ERR.INVALID_LENGTH, "the first chunk must carry the length")
        busy = self._slot_in_use()
        if busy:
            raise GroupError(ERR.NO_FREE_SLOT, f"secondary slot in use: {busy}")
        sha = request.sha
        if sha is not None and len(sha) != HASH_SIZE:
            raise GroupError(ERR.INVALID_HASH, f"upload SHA-256 of {len(sha)} bytes")
        if self._session is not None and (self._session.size, self._session.sha) == (
            request.len,
            sha,
        ):
            return  # the same upload begun again: carry on where it is
        try:
            offset, _ = self.upload.begin(request.len, sha or bytes(HASH_SIZE), sha is None)
        except Refused as exc:
            code = ERR.INVALID_LENGTH if exc.code == ErrorCode.BAD_REQUEST else None
            raise GroupError(code or UPLOAD_ERRORS.get(exc.code, ERR.UNKNOWN), exc.detail) from exc
        self._session = _Upload(request.len, sha, offset)
        log.info("mcu.smp_upload_begin", size=request.len, offset=offset)

    def _erase(self, request: smpimg.ImageEraseRequest) -> dict:
        if request.slot not in (None, 1):
            raise GroupError(ERR.INVALID_SLOT, "only the secondary slot can be erased")
        busy = self._slot_in_use()
        if busy:
            raise MgmtError(smperr.MGMT_ERR.EBADSTATE, busy)
        layout = self.config.layout
        for index in range(layout.slot_sectors):
            sector = layout.sector(Slot.SECONDARY, index)
            if not self.flash.is_erased(sector * layout.sector_size, layout.sector_size):
                self.flash.erase(sector)
        self._session = None
        self.upload = UploadStore(self.flash, layout)
        return {}
