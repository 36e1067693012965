"""The serial contract between the MCU host and an MCU: frame codec and message types."""

from protocol.serial.errors import CodecError
from protocol.serial.frame import Frame, FrameDecoder, decode_frame, encode_frame
from protocol.serial.messages import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    ErrorCode,
    Feature,
    ModelState,
    MsgType,
    SlotFlag,
    SlotState,
    decode,
    to_frame,
)

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "CodecError",
    "ErrorCode",
    "Feature",
    "Frame",
    "FrameDecoder",
    "ModelState",
    "MsgType",
    "SlotFlag",
    "SlotState",
    "decode",
    "decode_frame",
    "encode_frame",
    "to_frame",
]
