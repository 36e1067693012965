"""Message types of the serial protocol and their payload encodings (all little-endian).

Requests go host → MCU, each answered by one reply carrying the request's ``seq``; DATA and
DEFLATE_DATA are the exception: the MCU answers every one with a cumulative ACK (the next
offset it expects), so the host keeps a window of them in flight. ``decode`` turns a frame into
a message or raises ``CodecError``; it never trusts a length it has not checked.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from protocol.serial.errors import CodecError
from protocol.serial.frame import Frame

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1
MAX_CHUNK_LIMIT = 4096
MAX_FRAME = MAX_CHUNK_LIMIT + 64
HASH_SIZE = 32


class MsgType(enum.IntEnum):
    HELLO = 0x01
    INFO = 0x02
    BEGIN = 0x03
    DATA = 0x04
    FINISH = 0x05
    TEST = 0x06
    CONFIRM = 0x07
    REVERT = 0x08
    REBOOT = 0x09
    INFER = 0x0A
    DEFLATE_DATA = 0x0B
    OK = 0x80
    HELLO_REPLY = 0x81
    INFO_REPLY = 0x82
    BEGIN_REPLY = 0x83
    ACK = 0x84
    INFER_REPLY = 0x8A
    ERROR = 0xFF


class ErrorCode(enum.IntEnum):
    """Why the MCU refused a request; the host maps each to one clear line."""

    UNSUPPORTED_VERSION = 1
    BAD_REQUEST = 2
    BAD_STATE = 3
    TOO_LARGE = 4
    HASH_MISMATCH = 5
    IMAGE_INVALID = 6
    SIGNATURE = 7
    NO_IMAGE = 8
    BUSY = 9
    FLASH = 10
    MODEL = 11
    UNSUPPORTED = 12


class Feature(enum.IntFlag):
    RESUME = 0x1
    SIGNATURE = 0x2
    INFER = 0x4
    DEFLATE = 0x8
    """The MCU inflates uploads sent as raw-deflate blocks, one per flash sector."""


class SlotState(enum.IntEnum):
    EMPTY = 0
    VALID = 1
    INVALID = 2


class SlotFlag(enum.IntFlag):
    ACTIVE = 0x1
    CONFIRMED = 0x2
    PENDING_TEST = 0x4
    PENDING_REVERT = 0x8


class ModelState(enum.IntEnum):
    NONE = 0
    LOADED = 1
    TOO_LARGE = 2
    INVALID = 3
    UNSUPPORTED = 4


class UploadFlag(enum.IntFlag):
    RESTART = 0x1
    DEFLATE = 0x2
    """The image follows as DEFLATE_DATA (only when both sides offered ``Feature.DEFLATE``)."""


def _unpack(layout: struct.Struct, payload: bytes, name: str) -> tuple[Any, ...]:
    if len(payload) < layout.size:
        raise CodecError(f"{name} payload of {len(payload)} bytes, need {layout.size}")
    return layout.unpack_from(payload)


def _exact(layout: struct.Struct, payload: bytes, name: str) -> tuple[Any, ...]:
    if len(payload) != layout.size:
        raise CodecError(f"{name} payload of {len(payload)} bytes, need {layout.size}")
    return layout.unpack(payload)


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"{name} text is not UTF-8") from exc


@dataclass(frozen=True, slots=True)
class Hello:
    """Host's offer: the versions it speaks and the largest chunk and window it would use."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBHBI")
    min_version: int = MIN_PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    max_chunk: int = 1024
    window: int = 8
    features: int = int(Feature.RESUME | Feature.SIGNATURE | Feature.INFER | Feature.DEFLATE)

    def pack(self) -> bytes:
        return self.LAYOUT.pack(
            self.min_version, self.max_version, self.max_chunk, self.window, self.features
        )

    @classmethod
    def unpack(cls, payload: bytes) -> Hello:
        return cls(*_exact(cls.LAYOUT, payload, "HELLO"))


@dataclass(frozen=True, slots=True)
class HelloReply:
    """MCU's choice: one version, chunk and window no larger than offered, common features."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO_REPLY
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BHBI")
    version: int
    max_chunk: int
    window: int
    features: int
    device: str = ""

    def pack(self) -> bytes:
        head = self.LAYOUT.pack(self.version, self.max_chunk, self.window, self.features)
        return head + self.device.encode()

    @classmethod
    def unpack(cls, payload: bytes) -> HelloReply:
        version, max_chunk, window, features = _unpack(cls.LAYOUT, payload, "HELLO_REPLY")
        device = _text(payload[cls.LAYOUT.size :], "HELLO_REPLY")
        return cls(version, max_chunk, window, features, device)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """One slot: validity, flags, MCUboot version, and size and SHA-256 of the image file."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBBBHII32s")
    state: SlotState = SlotState.EMPTY
    flags: int = 0
    version: tuple[int, int, int, int] = (0, 0, 0, 0)
    image_size: int = 0
    sha256: bytes = bytes(HASH_SIZE)

    @property
    def version_text(self) -> str:
        major, minor, revision, build = self.version
        return f"{major}.{minor}.{revision}+{build}"

    def pack(self) -> bytes:
        major, minor, revision, build = self.version
        return self.LAYOUT.pack(
            self.state, self.flags, major, minor, revision, build, self.image_size, self.sha256
        )

    @classmethod
    def unpack(cls, raw: bytes) -> SlotInfo:
        state, flags, major, minor, revision, build, size, digest = cls.LAYOUT.unpack(raw)
        try:
            slot_state = SlotState(state)
        except ValueError as exc:
            raise CodecError(f"unknown slot state {state}") from exc
        return cls(slot_state, flags, (major, minor, revision, build), size, digest)


@dataclass(frozen=True, slots=True)
class _Bare:
    """A message without payload; subclasses only name their type."""

    TYPE: ClassVar[MsgType]

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        if payload:
            raise CodecError(f"{cls.TYPE.name} takes no payload")
        return cls()


class Info(_Bare):
    TYPE = MsgType.INFO


@dataclass(frozen=True, slots=True)
class InfoReply:
    """Flash geometry, the RAM left for a model arena, the model's state, and both slots."""

    TYPE: ClassVar[MsgType] = MsgType.INFO_REPLY
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IIHIIB")
    slot_size: int
    max_image_size: int
    write_align: int
    sector_size: int
    arena_size: int
    model_state: ModelState
    primary: SlotInfo = field(default_factory=SlotInfo)
    secondary: SlotInfo = field(default_factory=SlotInfo)

    def pack(self) -> bytes:
        head = self.LAYOUT.pack(
            self.slot_size,
            self.max_image_size,
            self.write_align,
            self.sector_size,
            self.arena_size,
            self.model_state,
        )
        return head + self.primary.pack() + self.secondary.pack()

    @classmethod
    def unpack(cls, payload: bytes) -> InfoReply:
        slot = SlotInfo.LAYOUT.size
        if len(payload) != cls.LAYOUT.size + 2 * slot:
            raise CodecError(f"INFO_REPLY payload of {len(payload)} bytes")
        slot_size, max_image, write_align, sector_size, arena_size, model = cls.LAYOUT.unpack_from(
            payload
        )
        try:
            model_state = ModelState(model)
        except ValueError as exc:
            raise CodecError(f"unknown model state {model}") from exc
        base = cls.LAYOUT.size
        primary = SlotInfo.unpack(payload[base : base + slot])
        secondary = SlotInfo.unpack(payload[base + slot :])
        return cls(
            slot_size,
            max_image,
            write_align,
            sector_size,
            arena_size,
            model_state,
            primary,
            secondary,
        )


@dataclass(frozen=True, slots=True)
class Begin:
    """Start or resume an upload of ``size`` bytes whose SHA-256 is ``sha256``."""

    TYPE: ClassVar[MsgType] = MsgType.BEGIN
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I32sB")
    size: int
    sha256: bytes
    flags: int = 0

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.size, self.sha256, self.flags)

    @classmethod
    def unpack(cls, payload: bytes) -> Begin:
        return cls(*_exact(cls.LAYOUT, payload, "BEGIN"))


@dataclass(frozen=True, slots=True)
class BeginReply:
    """Where the upload goes on: the MCU holds ``offset`` bytes hashing to ``prefix_sha256``."""

    TYPE: ClassVar[MsgType] = MsgType.BEGIN_REPLY
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I32s")
    offset: int
    prefix_sha256: bytes

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.offset, self.prefix_sha256)

    @classmethod
    def unpack(cls, payload: bytes) -> BeginReply:
        return cls(*_exact(cls.LAYOUT, payload, "BEGIN_REPLY"))


@dataclass(frozen=True, slots=True)
class Data:
    TYPE: ClassVar[MsgType] = MsgType.DATA
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I")
    offset: int
    chunk: bytes

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.offset) + self.chunk

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        (offset,) = _unpack(cls.LAYOUT, payload, cls.TYPE.name)
        chunk = payload[cls.LAYOUT.size :]
        if not chunk:
            raise CodecError(f"{cls.TYPE.name} without bytes")
        return cls(offset, chunk)


@dataclass(frozen=True, slots=True)
class DeflateData(Data):
    """Compressed upload bytes; ``offset`` counts compressed bytes since the BEGIN_REPLY.

    The stream is the image's raw-deflate blocks (``protocol.serial.deflate``) from the block
    at BEGIN_REPLY's offset on; the ACK that answers it counts compressed bytes too.
    """

    TYPE: ClassVar[MsgType] = MsgType.DEFLATE_DATA


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative: every byte before ``offset`` arrived in order."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I")
    offset: int

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.offset)

    @classmethod
    def unpack(cls, payload: bytes) -> Ack:
        return cls(*_exact(cls.LAYOUT, payload, "ACK"))


@dataclass(frozen=True, slots=True)
class Infer:
    """Run one inference on ``tensor`` (raw input bytes; empty means all zeros)."""

    TYPE: ClassVar[MsgType] = MsgType.INFER
    tensor: bytes = b""

    def pack(self) -> bytes:
        return self.tensor

    @classmethod
    def unpack(cls, payload: bytes) -> Infer:
        return cls(payload)


@dataclass(frozen=True, slots=True)
class InferReply:
    TYPE: ClassVar[MsgType] = MsgType.INFER_REPLY
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I")
    micros: int
    output: bytes

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.micros) + self.output

    @classmethod
    def unpack(cls, payload: bytes) -> InferReply:
        (micros,) = _unpack(cls.LAYOUT, payload, "INFER_REPLY")
        return cls(micros, payload[cls.LAYOUT.size :])


@dataclass(frozen=True, slots=True)
class Error:
    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: ErrorCode
    detail: str = ""

    def pack(self) -> bytes:
        return bytes([self.code]) + self.detail.encode()

    @classmethod
    def unpack(cls, payload: bytes) -> Error:
        if not payload:
            raise CodecError("ERROR without a code")
        try:
            code = ErrorCode(payload[0])
        except ValueError as exc:
            raise CodecError(f"unknown error code {payload[0]}") from exc
        return cls(code, _text(payload[1:], "ERROR"))


class Finish(_Bare):
    """The upload is complete: check it against BEGIN's hash, then as an MCUboot image."""

    TYPE = MsgType.FINISH


class Test(_Bare):
    """Swap the uploaded image in on trial at the next boot."""

    TYPE = MsgType.TEST


class Confirm(_Bare):
    """Keep the running image."""

    TYPE = MsgType.CONFIRM


class Revert(_Bare):
    """Go back to the previous image at the next boot."""

    TYPE = MsgType.REVERT


class Reboot(_Bare):
    TYPE = MsgType.REBOOT


class Ok(_Bare):
    TYPE = MsgType.OK


Message = (
    Hello
    | HelloReply
    | Info
    | InfoReply
    | Begin
    | BeginReply
    | Data
    | DeflateData
    | Ack
    | Finish
    | Test
    | Confirm
    | Revert
    | Reboot
    | Infer
    | InferReply
    | Ok
    | Error
)

MESSAGES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        HelloReply,
        Info,
        InfoReply,
        Begin,
        BeginReply,
        Data,
        DeflateData,
        Ack,
        Finish,
        Test,
        Confirm,
        Revert,
        Reboot,
        Infer,
        InferReply,
        Ok,
        Error,
    )
}


def decode(frame: Frame) -> Message:
    """The message a frame carries; CodecError for an unknown type or a malformed payload."""
    cls = MESSAGES.get(frame.type)
    if cls is None:
        raise CodecError(f"unknown message type 0x{frame.type:02x}")
    try:
        return cls.unpack(frame.payload)
    except struct.error as exc:
        raise CodecError(f"malformed {cls.TYPE.name} payload") from exc


def to_frame(message: Message, seq: int) -> Frame:
    """The frame carrying ``message`` with sequence number ``seq``."""
    return Frame(message.TYPE, seq, message.pack())
