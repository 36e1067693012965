"""The simulated MCU: bootloader at power-on, then an application speaking the serial protocol.

``receive`` takes bytes from the wire and returns the bytes to send back; nothing here knows
about ptys, sockets or time, so tests drive it in-process and ``uart`` drives it at a baud rate.
A REBOOT request is answered first, then ``reboot_pending`` asks the caller to ``power_on``
again once the answer is on the wire.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import structlog

from firmware_sim import bootloader
from firmware_sim import layout as lay
from firmware_sim.bootloader import Verifier
from firmware_sim.flash import Flash
from firmware_sim.layout import Layout, Slot, SwapType
from firmware_sim.mcuboot_image import ImageError, SignatureError
from firmware_sim.model import ModelRunner
from firmware_sim.refusal import Refused
from firmware_sim.upload import UploadStore
from protocol.serial import messages as msg
from protocol.serial.errors import CodecError
from protocol.serial.frame import Frame, FrameDecoder, encode_frame
from protocol.serial.messages import ErrorCode, Feature, ModelState, SlotFlag, SlotState

log = structlog.get_logger()


@dataclass(frozen=True)
class McuConfig:
    layout: Layout = field(default_factory=Layout)
    verifier: Verifier = field(default_factory=Verifier)
    arena_size: int = 16 * 1024
    max_chunk: int = msg.MAX_CHUNK_LIMIT
    window: int = 8
    device: str = "edgefleet-mcu-sim"
    model_runtime: bool = True
    """Run the model with TFLite Micro; False plays a target without one (like the QEMU one)."""
    deflate: bool = True
    """Offer compressed uploads; False plays a target that does not (like the QEMU one)."""


def _power_of_two_floor(value: int) -> int:
    return 1 << (value.bit_length() - 1) if value > 0 else 0


class SimulatedMcu:
    def __init__(self, flash: Flash, config: McuConfig) -> None:
        self.flash = flash
        self.config = config
        self.dropped_frames = 0
        self._handlers = {
            msg.Hello: self._hello,
            msg.Info: self._info,
            msg.Begin: self._begin,
            msg.Data: self._data,
            msg.DeflateData: self._deflate_data,
            msg.Finish: self._finish,
            msg.Test: self._test,
            msg.Confirm: self._confirm,
            msg.Revert: self._revert,
            msg.Reboot: self._reboot,
            msg.Infer: self._infer,
        }
        self.power_on()

    def power_on(self) -> None:
        """Run the bootloader, then start the application on the primary image."""
        self.reboot_pending = False
        self._decoder = FrameDecoder(msg.MAX_FRAME)
        self._chunk = 0
        self._features = Feature(0)
        self.boot = bootloader.boot(self.flash, self.config.layout, self.config.verifier)
        self.upload = UploadStore(self.flash, self.config.layout)
        self.model = ModelRunner(
            self._model_bytes(), self.config.arena_size, self.config.model_runtime
        )

    def _model_bytes(self) -> bytes | None:
        image = self.boot.image
        if image is None:
            return None
        start, end = image.body_range
        return self.flash.read(self.config.layout.base(Slot.PRIMARY) + start, end - start)

    def receive(self, data: bytes) -> bytes:
        """Handle every complete frame in ``data``; returns the reply bytes."""
        out = bytearray()
        for item in self._decoder.feed(data):
            if self.reboot_pending:
                break
            if isinstance(item, CodecError):
                self.dropped_frames += 1
                log.debug("mcu.frame_dropped", reason=str(item))
                continue
            out += encode_frame(self._reply(item))
        return bytes(out)

    def _reply(self, frame: Frame) -> Frame:
        try:
            message = msg.decode(frame)
            handler = self._handlers.get(type(message))
            if handler is None:
                raise Refused(ErrorCode.BAD_REQUEST, f"{message.TYPE.name} is not a request")
            if self._chunk == 0 and not isinstance(message, msg.Hello):
                raise Refused(ErrorCode.BAD_STATE, "HELLO first")
            reply = handler(message)
        except CodecError as exc:
            reply = msg.Error(ErrorCode.BAD_REQUEST, str(exc))
        except Refused as exc:
            reply = msg.Error(exc.code, exc.detail)
        return msg.to_frame(reply, frame.seq)

    def _hello(self, hello: msg.Hello) -> msg.HelloReply:
        if not hello.min_version <= msg.PROTOCOL_VERSION <= hello.max_version:
            raise Refused(
                ErrorCode.UNSUPPORTED_VERSION, f"this MCU speaks version {msg.PROTOCOL_VERSION}"
            )
        chunk = _power_of_two_floor(min(hello.max_chunk, self.config.max_chunk))
        if chunk < 16:
            raise Refused(ErrorCode.BAD_REQUEST, "chunk size below 16 bytes")
        self._chunk = chunk
        ours = Feature.RESUME
        if self.config.deflate:
            ours |= Feature.DEFLATE
        if self.config.model_runtime:
            ours |= Feature.INFER
        if self.config.verifier.require_signature:
            ours |= Feature.SIGNATURE
        self._features = ours & hello.features
        return msg.HelloReply(
            msg.PROTOCOL_VERSION,
            chunk,
            max(1, min(hello.window, self.config.window)),
            int(self._features),
            self.config.device,
        )

    def _info(self, _: msg.Info) -> msg.InfoReply:
        layout = self.config.layout
        trailers = bootloader.read_trailers(self.flash, layout)
        primary_flags = SlotFlag.ACTIVE
        if not trailers.on_trial:
            primary_flags |= SlotFlag.CONFIRMED
        secondary_flags = SlotFlag(0)
        if trailers.request == SwapType.TEST:
            secondary_flags |= SlotFlag.PENDING_TEST
        if trailers.request == SwapType.REVERT:
            secondary_flags |= SlotFlag.PENDING_REVERT
        return msg.InfoReply(
            layout.slot_size,
            layout.capacity,
            layout.write_align,
            layout.sector_size,
            self.config.arena_size,
            self.model.state,
            self._slot_info(Slot.PRIMARY, primary_flags),
            self._slot_info(Slot.SECONDARY, secondary_flags),
        )

    def _slot_info(self, slot: Slot, flags: SlotFlag) -> msg.SlotInfo:
        data = bootloader.slot_bytes(self.flash, self.config.layout, slot)
        if lay.is_blank(data[:32]):
            return msg.SlotInfo(SlotState.EMPTY, int(flags))
        try:
            image = self.config.verifier.check(data)
        except ImageError:
            return msg.SlotInfo(SlotState.INVALID, int(flags))
        digest = hashlib.sha256(data[: image.total_size]).digest()
        return msg.SlotInfo(SlotState.VALID, int(flags), image.version, image.total_size, digest)

    def _on_trial(self) -> bool:
        return bootloader.read_trailers(self.flash, self.config.layout).on_trial

    def _begin(self, begin: msg.Begin) -> msg.BeginReply:
        if self._on_trial():
            raise Refused(ErrorCode.BUSY, "running image is on trial: confirm or revert first")
        restart = bool(begin.flags & msg.UploadFlag.RESTART)
        deflate = bool(begin.flags & msg.UploadFlag.DEFLATE)
        if deflate and not self._features & Feature.DEFLATE:
            raise Refused(ErrorCode.UNSUPPORTED, "compressed upload not agreed in HELLO")
        offset, prefix = self.upload.begin(begin.size, begin.sha256, restart, deflate)
        return msg.BeginReply(offset, prefix)

    def _data(self, data: msg.Data) -> msg.Ack:
        if len(data.chunk) > self._chunk:
            raise Refused(ErrorCode.BAD_REQUEST, f"chunk larger than {self._chunk}")
        return msg.Ack(self.upload.accept(data.offset, data.chunk))

    def _deflate_data(self, data: msg.DeflateData) -> msg.Ack:
        if len(data.chunk) > self._chunk:
            raise Refused(ErrorCode.BAD_REQUEST, f"chunk larger than {self._chunk}")
        return msg.Ack(self.upload.accept_deflate(data.offset, data.chunk))

    def _finish(self, _: msg.Finish) -> msg.Ok:
        self.upload.finish(self.config.verifier)
        return msg.Ok()

    def _test(self, _: msg.Test) -> msg.Ok:
        if self._on_trial():
            raise Refused(ErrorCode.BUSY, "running image is on trial: confirm or revert first")
        try:
            bootloader.check_slot(
                self.flash, self.config.layout, Slot.SECONDARY, self.config.verifier
            )
        except SignatureError as exc:
            raise Refused(ErrorCode.SIGNATURE, str(exc)) from exc
        except ImageError as exc:
            raise Refused(ErrorCode.NO_IMAGE, f"secondary slot: {exc}") from exc
        bootloader.request_test(self.flash, self.config.layout)
        return msg.Ok()

    def _confirm(self, _: msg.Confirm) -> msg.Ok:
        if self.boot.image is None:
            raise Refused(ErrorCode.NO_IMAGE, "no verified image is running")
        bootloader.confirm(self.flash, self.config.layout)
        return msg.Ok()

    def _revert(self, _: msg.Revert) -> msg.Ok:
        layout = self.config.layout
        if self._on_trial():
            return msg.Ok()
        upload = lay.read_record(
            self.flash, layout.trailer(Slot.SECONDARY) + lay.OFF_UPLOAD, lay.UPLOAD
        )
        if upload is not None:
            raise Refused(
                ErrorCode.NO_IMAGE, "secondary slot holds a new upload, not the previous image"
            )
        try:
            bootloader.check_slot(self.flash, layout, Slot.SECONDARY, self.config.verifier)
        except ImageError as exc:
            raise Refused(ErrorCode.NO_IMAGE, f"no previous image to revert to: {exc}") from exc
        bootloader.request_revert(self.flash, layout)
        return msg.Ok()

    def _reboot(self, _: msg.Reboot) -> msg.Ok:
        self.reboot_pending = True
        return msg.Ok()

    def _infer(self, infer: msg.Infer) -> msg.InferReply:
        if self.model.state == ModelState.UNSUPPORTED:
            raise Refused(ErrorCode.UNSUPPORTED, "no model runtime on this target")
        if self.model.state != ModelState.LOADED:
            raise Refused(ErrorCode.MODEL, f"model state {self.model.state.name}")
        try:
            output, micros = self.model.infer(infer.tensor)
        except ValueError as exc:
            raise Refused(ErrorCode.BAD_REQUEST, str(exc)) from exc
        return msg.InferReply(micros, output)
