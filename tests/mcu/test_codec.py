"""The frame codec and message encodings: round trips, and arbitrary bytes never hang or crash."""

from __future__ import annotations

import contextlib
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.serial import cobs, messages
from protocol.serial.errors import CodecError
from protocol.serial.frame import Frame, FrameDecoder, decode_frame, encode_frame

frames = st.builds(
    Frame,
    type=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=600),
)


@given(st.binary(max_size=2000))
def test_cobs_round_trip_has_no_zero(data):
    stuffed = cobs.encode(data)
    assert 0 not in stuffed
    assert cobs.decode(stuffed) == data


@given(st.lists(frames, max_size=8), st.integers(1, 64))
def test_stream_of_frames_decodes_in_any_chunking(items, step):
    wire = b"".join(encode_frame(f) for f in items)
    decoder = FrameDecoder(messages.MAX_FRAME)
    got = []
    for start in range(0, len(wire), step):
        got.extend(decoder.feed(wire[start : start + step]))
    assert got == items


@settings(max_examples=500)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_give_only_codec_errors(data):
    decoder = FrameDecoder(512)
    for item in decoder.feed(data + b"\x00"):
        if isinstance(item, Frame):
            with contextlib.suppress(CodecError):
                messages.decode(item)
        else:
            assert isinstance(item, CodecError)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_decode_frame_raises_only_codec_error(data):
    with contextlib.suppress(CodecError):
        decode_frame(data)


@settings(max_examples=300)
@given(st.integers(0, 255), st.binary(max_size=300))
def test_any_payload_for_any_type_gives_message_or_codec_error(kind, payload):
    try:
        message = messages.decode(Frame(kind, 1, payload))
    except CodecError:
        return
    assert messages.decode(messages.to_frame(message, 1)) == message


@given(frames, st.data())
def test_flipped_bit_is_detected(frame, data):
    wire = bytearray(encode_frame(frame))
    index = data.draw(st.integers(0, len(wire) - 2))
    bit = data.draw(st.integers(0, 7))
    wire[index] ^= 1 << bit
    got = list(FrameDecoder(messages.MAX_FRAME).feed(bytes(wire)))
    assert frame not in got


def test_oversized_frame_is_skipped_and_stream_resynchronises():
    decoder = FrameDecoder(64)
    good = Frame(messages.MsgType.ACK, 3, messages.Ack(4096).pack())
    wire = encode_frame(Frame(messages.MsgType.DATA, 1, bytes(200))) + encode_frame(good)
    got = list(decoder.feed(wire))
    assert isinstance(got[0], CodecError)
    assert got[1] == good


def test_crc_covers_type_seq_and_payload():
    body = bytes([messages.MsgType.OK]) + (5).to_bytes(2, "little")
    wire = cobs.encode(body + zlib.crc32(body).to_bytes(4, "little")) + b"\x00"
    assert list(FrameDecoder(64).feed(wire)) == [Frame(messages.MsgType.OK, 5)]
    bad = cobs.encode(body + (zlib.crc32(body) ^ 1).to_bytes(4, "little"))
    with pytest.raises(CodecError, match="CRC"):
        decode_frame(bad)


@pytest.mark.parametrize(
    "message",
    [
        messages.Hello(),
        messages.HelloReply(1, 512, 4, 3, "mcu"),
        messages.Info(),
        messages.InfoReply(
            65536,
            61440,
            8,
            4096,
            40000,
            messages.ModelState.LOADED,
            messages.SlotInfo(messages.SlotState.VALID, 3, (1, 2, 3, 4), 100, bytes(range(32))),
        ),
        messages.Begin(100, bytes(32), messages.UploadFlag.RESTART),
        messages.BeginReply(4096, bytes(range(32))),
        messages.Data(1024, b"\x00\x01"),
        messages.Ack(2048),
        messages.Finish(),
        messages.Test(),
        messages.Confirm(),
        messages.Revert(),
        messages.Reboot(),
        messages.Infer(b"\x01" * 490),
        messages.InferReply(123, b"\x80\x7f"),
        messages.Ok(),
        messages.Error(messages.ErrorCode.SIGNATURE, "refused"),
    ],
)
def test_every_message_round_trips(message):
    wire = encode_frame(messages.to_frame(message, 42))
    (frame,) = FrameDecoder(messages.MAX_FRAME).feed(wire)
    assert frame.seq == 42
    assert messages.decode(frame) == message
