"""Compressed uploads: the DEFLATE_DATA message, the bounded block inflater, and the MCU's use.

The inflater takes bytes from the wire, so it is fuzzed: any input yields blocks of exactly
their share of the image or one InflateError, never more output than the image, never another
exception. Bombs and endless empty blocks are refused with one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.mcu.errors import Refusal
from agent.mcu.flasher import flash_image
from firmware_sim.mcu import SimulatedMcu
from protocol.serial import messages as msg
from protocol.serial.deflate import (
    WBITS,
    BlockInflater,
    InflateError,
    deflate_blocks,
    max_block_input,
)
from protocol.serial.errors import CodecError
from protocol.serial.frame import Frame
from tests.mcu.mcu_support import direct_client, factory_flash, mcu_config

images_and_blocks = st.tuples(st.binary(min_size=1, max_size=3000), st.integers(16, 1024))


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, WBITS)
    return compressor.compress(data) + compressor.flush()


@given(st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=600))
def test_deflate_data_round_trip(offset, chunk):
    message = msg.DeflateData(offset, chunk)
    assert msg.decode(msg.to_frame(message, 3)) == message


@given(st.binary(max_size=600))
def test_deflate_data_payload_gives_a_message_or_codec_error(payload):
    try:
        message = msg.decode(Frame(msg.MsgType.DEFLATE_DATA, 1, payload))
    except CodecError:
        assert len(payload) <= 4
        return
    assert message.pack() == payload


@settings(max_examples=300)
@given(images_and_blocks, st.integers(1, 700), st.data())
def test_blocks_inflate_to_the_image_in_any_chunking_and_from_any_block(case, step, data):
    image, block = case
    blocks = deflate_blocks(image, block)
    first = data.draw(st.integers(0, len(blocks)))
    start = min(first * block, len(image))
    stream = b"".join(blocks[first:])
    inflater = BlockInflater(len(image), block, start)
    out = []
    for at in range(0, len(stream), step):
        out += inflater.feed(stream[at : at + step])
    assert inflater.done
    assert [index for index, _ in out] == list(range(first, len(blocks)))
    assert b"".join(part for _, part in out) == image[start:]


@settings(max_examples=500)
@given(images_and_blocks, st.binary(max_size=4000))
def test_any_bytes_give_whole_blocks_or_one_inflate_error(case, garbage):
    image, block = case
    inflater = BlockInflater(len(image), block)
    produced = 0
    with contextlib.suppress(InflateError):
        for index, part in inflater.feed(garbage):
            assert len(part) == min(block, len(image) - index * block)
            produced += len(part)
    assert produced <= len(image)


def test_a_bomb_is_refused_without_inflating_it():
    bomb = raw_deflate(bytes(50_000_000))  # 50 MB of zeros in about 50 KB
    inflater = BlockInflater(4096, 4096)
    with pytest.raises(InflateError, match="block 0 inflates past its 4096 bytes"):
        inflater.feed(bomb[:1024])


def test_short_block_and_data_past_the_end_are_refused():
    with pytest.raises(InflateError, match="inflates to 100 bytes, not 4096"):
        BlockInflater(8192, 4096).feed(raw_deflate(bytes(100)))
    whole = raw_deflate(bytes(4096))
    with pytest.raises(InflateError, match="past the end of the image"):
        BlockInflater(4096, 4096).feed(whole + whole)


def test_endless_empty_blocks_are_refused():
    empty_stored = b"\x00\x00\x00\xff\xff"  # a non-final stored block of length 0
    inflater = BlockInflater(4096, 4096)
    with pytest.raises(InflateError, match="takes more than"):
        for _ in range(max_block_input(4096) // len(empty_stored) + 2):
            inflater.feed(empty_stored)


def test_resume_point_must_be_a_block_boundary():
    with pytest.raises(ValueError):
        BlockInflater(10_000, 4096, 100)
    assert BlockInflater(10_000, 4096, 10_000).done


# -- the simulated MCU -------------------------------------------------------------------


def fresh_mcu(images, **config) -> SimulatedMcu:
    return SimulatedMcu(factory_flash(images.v1), mcu_config(images, **config))


def test_compressed_flash_moves_fewer_bytes_and_lands_the_same_image(images):
    mcu = fresh_mcu(images)
    result = flash_image(direct_client(mcu), images.v2, confirm=True)
    assert result.compressed
    assert result.bytes_sent == sum(map(len, deflate_blocks(images.v2, 4096)))
    assert result.bytes_sent < 0.85 * len(images.v2)
    mcu.power_on()
    assert mcu.boot.image.version == (2, 0, 0, 0)


def test_mcu_without_deflate_gets_todays_protocol(images):
    """An MCU that does not offer DEFLATE (the QEMU firmware) gets DATA frames, as before."""
    mcu = fresh_mcu(images, deflate=False)
    client = direct_client(mcu)
    assert not client.hello().features & msg.Feature.DEFLATE
    result = flash_image(client, images.v2, confirm=True)
    assert not result.compressed
    assert result.bytes_sent == len(images.v2)


def test_host_with_deflate_off_sends_raw(images):
    client = direct_client(fresh_mcu(images), deflate=False)
    assert not client.hello().features & msg.Feature.DEFLATE
    assert not flash_image(client, images.v2, confirm=True).compressed


def test_incompressible_image_costs_no_more_than_raw(images):
    """Random payload: deflate stores it, and the header's padding still shrinks; the host
    would send it raw if the blocks were larger than the image."""
    mcu = fresh_mcu(images, model_runtime=False)
    result = flash_image(direct_client(mcu), images.noise, confirm=False)
    assert result.compressed
    assert result.bytes_sent <= len(images.noise)


def test_compressed_begin_needs_the_feature(images):
    client = direct_client(fresh_mcu(images), deflate=False)
    client.hello()
    with pytest.raises(Refusal) as err:
        client.begin(images.v2, deflate=True)
    assert err.value.code == msg.ErrorCode.UNSUPPORTED


def test_a_bomb_on_the_wire_is_one_refusal_and_ends_the_upload(images):
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    client.hello()
    client.begin(images.v2, deflate=True)
    bomb = raw_deflate(bytes(10_000_000))
    with pytest.raises(Refusal) as err:
        client.request(msg.DeflateData(0, bomb[:1024]))
    assert err.value.code == msg.ErrorCode.BAD_REQUEST
    assert err.value.detail == "block 0 inflates past its 4096 bytes"
    with pytest.raises(Refusal) as err:
        client.request(msg.DeflateData(1024, bomb[1024:2048]))
    assert err.value.code == msg.ErrorCode.BAD_STATE


def test_raw_and_compressed_frames_do_not_mix(images):
    client = direct_client(fresh_mcu(images))
    client.hello()
    client.begin(images.v2, deflate=True)
    with pytest.raises(Refusal) as err:
        client.request(msg.Data(0, images.v2[:1024]))
    assert err.value.code == msg.ErrorCode.BAD_STATE
    client.begin(images.v2)
    with pytest.raises(Refusal) as err:
        client.request(msg.DeflateData(0, b"\x03\x00"))
    assert err.value.code == msg.ErrorCode.BAD_STATE


def test_hash_checks_are_on_the_image_not_the_stream(images):
    """A compressed upload of other bytes under the image's hash fails FINISH, as raw does."""
    client = direct_client(fresh_mcu(images))
    client.hello()
    client.request(msg.Begin(len(images.v2), bytes(32), msg.UploadFlag.DEFLATE))
    client.send_deflate(images.v2, 4096, 0)
    with pytest.raises(Refusal) as err:
        client.finish()
    assert err.value.code == msg.ErrorCode.HASH_MISMATCH
    reply = client.begin(images.v2, deflate=True)
    assert reply.offset == 0  # another upload's record: nothing kept
    assert reply.prefix_sha256 == hashlib.sha256(b"").digest()
