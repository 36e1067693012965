"""The protocol between host and simulated MCU, in-process: resume, refusals, a noisy line."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.mcu.errors import (
    ImageTooLarge,
    LinkLost,
    NoAnswer,
    NoDevice,
    Refusal,
    WrongProtocol,
    explain,
)
from agent.mcu.flasher import flash_image
from firmware_sim.mcu import SimulatedMcu
from protocol.serial import messages as msg
from protocol.serial.deflate import deflate_blocks
from protocol.serial.frame import Frame, FrameDecoder, encode_frame
from protocol.serial.messages import ErrorCode, ModelState, SlotFlag, SlotState
from tests.mcu.mcu_support import direct_client, factory_flash, mcu_config


def fresh_mcu(images, **config) -> SimulatedMcu:
    return SimulatedMcu(factory_flash(images.v1), mcu_config(images, **config))


def test_hello_negotiates_chunk_window_and_features(images):
    client = direct_client(fresh_mcu(images, max_chunk=512, window=2), max_chunk=1000, window=8)
    reply = client.hello()
    assert (reply.version, reply.max_chunk, reply.window) == (1, 512, 2)
    assert reply.features & msg.Feature.SIGNATURE


def test_host_offers_4k_chunks_and_deflate_by_default(images):
    from agent.mcu.client import LinkConfig, McuClient
    from tests.mcu.mcu_support import DirectLink

    reply = McuClient(DirectLink(fresh_mcu(images)), LinkConfig()).hello()
    assert reply.max_chunk == 4096
    assert reply.features & msg.Feature.DEFLATE


def test_requests_before_hello_are_refused(images):
    client = direct_client(fresh_mcu(images))
    with pytest.raises(Refusal) as err:
        client.info()
    assert err.value.code == ErrorCode.BAD_STATE


def test_info_reports_slots_geometry_and_model(images):
    client = direct_client(fresh_mcu(images))
    client.hello()
    info = client.info()
    assert info.primary.state == SlotState.VALID
    assert info.primary.version == (1, 0, 0, 0)
    assert info.primary.sha256 == hashlib.sha256(images.v1).digest()
    assert info.primary.flags & SlotFlag.CONFIRMED
    assert info.secondary.state == SlotState.EMPTY
    assert (info.sector_size, info.write_align, info.arena_size) == (4096, 8, 16 * 1024)
    assert info.model_state == ModelState.LOADED


def test_model_that_does_not_fit_the_arena_is_reported(images):
    mcu = fresh_mcu(images, arena_size=4096)
    client = direct_client(mcu)
    client.hello()
    assert client.info().model_state == ModelState.TOO_LARGE
    with pytest.raises(Refusal) as err:
        client.infer()
    assert err.value.code == ErrorCode.MODEL


def test_infer_runs_the_active_model(images):
    client = direct_client(fresh_mcu(images))
    client.hello()
    reply = client.infer(bytes(490))
    assert len(reply.output) == 4
    with pytest.raises(Refusal):
        client.infer(b"\x01" * 3)


@pytest.mark.parametrize("deflate", [False, True], ids=["raw", "deflate"])
def test_resume_sends_only_what_the_mcu_lacks(images, deflate):
    """An upload cut at 20000 bytes resumes at the last whole sector, compressed or not (the
    flags are the image's, so a compressed resume continues what went raw)."""
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    client.hello()
    stop_at = 20000

    class Interrupted(Exception):
        pass

    def interrupt(done):
        if done >= stop_at:
            raise Interrupted

    with pytest.raises(Interrupted):
        client.send_data(images.v2, client.resume_point(images.v2), interrupt)
    mcu.power_on()
    result = flash_image(direct_client(mcu, deflate=deflate), images.v2, confirm=True)
    assert result.resumed_from % 4096 == 0
    assert 16384 <= result.resumed_from < len(images.v2)
    assert result.compressed is deflate
    rest = len(images.v2) - result.resumed_from
    assert result.bytes_sent < rest if deflate else result.bytes_sent == rest
    assert result.version == "2.0.0+0"


def test_resume_with_other_bytes_starts_over(images):
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    client.hello()
    begin = msg.Begin(len(images.v2), hashlib.sha256(images.v2).digest())
    client.request(begin)
    client.send_data(images.v3[: len(images.v2)], 0)
    assert client.begin(images.v2).offset == len(images.v2)
    result = flash_image(client, images.v2, confirm=True)
    assert result.resumed_from == 0
    assert result.version == "2.0.0+0"


def test_image_too_large_for_the_slot(images):
    client = direct_client(fresh_mcu(images))
    with pytest.raises(ImageTooLarge):
        flash_image(client, images.big, confirm=True)
    with pytest.raises(Refusal) as err:
        client.begin(images.big)
    assert err.value.code == ErrorCode.TOO_LARGE


def test_wrong_signature_is_refused_and_nothing_changes(images):
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    with pytest.raises(Refusal) as err:
        flash_image(client, images.foreign, confirm=True)
    assert err.value.code == ErrorCode.SIGNATURE
    with pytest.raises(Refusal) as err:
        client.test()
    assert err.value.code == ErrorCode.SIGNATURE
    mcu.power_on()
    assert mcu.boot.image.version == (1, 0, 0, 0)


def test_hash_mismatch_is_refused(images):
    client = direct_client(fresh_mcu(images))
    client.hello()
    client.request(msg.Begin(len(images.v2), bytes(32)))
    client.send_data(images.v2, 0)
    with pytest.raises(Refusal) as err:
        client.finish()
    assert err.value.code == ErrorCode.HASH_MISMATCH


@pytest.mark.parametrize("deflate", [False, True], ids=["raw", "deflate"])
def test_corrupted_chunk_is_dropped_and_sent_again(images, deflate):
    damaged = []

    def flip(index, data):
        if len(data) > 1000 and len(damaged) < 3 and index % 7 == 0:
            damaged.append(index)
            data = bytearray(data)
            data[500] = data[500] ^ 0x10 or 0x20  # never a delimiter: one frame stays one
            return bytes(data)
        return data

    mcu = fresh_mcu(images)
    client = direct_client(mcu, tamper=flip, deflate=deflate)
    result = flash_image(client, images.v2, confirm=True)
    assert result.compressed is deflate
    assert len(damaged) == 3
    assert mcu.dropped_frames == 3
    assert result.retransmits >= 3
    assert result.version == "2.0.0+0"


@pytest.mark.parametrize("deflate", [False, True], ids=["raw", "deflate"])
def test_lost_frames_are_retransmitted(images, deflate):
    lost = []

    def drop(index, data):
        if len(data) > 1000 and index in (9, 10, 25):
            lost.append(index)
            return b""
        return data

    client = direct_client(fresh_mcu(images), tamper=drop, deflate=deflate)
    result = flash_image(client, images.v2, confirm=True)
    assert lost == [9, 10, 25]
    assert result.retransmits >= 2
    stream = deflate_blocks(images.v2, 4096) if deflate else [images.v2]
    assert result.bytes_sent > sum(map(len, stream))


def test_lost_reply_is_retried(images):
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    client.hello()
    original = mcu.receive
    calls = []

    def lossy(data):
        calls.append(data)
        reply = original(data)
        return b"" if len(calls) == 1 else reply

    mcu.receive = lossy
    assert client.info().primary.state == SlotState.VALID
    assert len(calls) == 2


def test_silent_device_and_foreign_device(images):
    class Silent:
        def write(self, data):
            pass

        def read(self, timeout):
            return b""

        def close(self):
            pass

    class Chatty(Silent):
        def read(self, timeout):
            return b"login: \r\n\x00garbage\x00"

    from agent.mcu.client import LinkConfig, McuClient

    config = LinkConfig(timeout=0.01, retries=1)
    with pytest.raises(NoAnswer):
        McuClient(Silent(), config).hello()
    with pytest.raises(WrongProtocol):
        McuClient(Chatty(), config).hello()


def test_unconfirmed_image_reverts_and_blocks_uploads_until_decided(images):
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    flash_image(client, images.v2, confirm=False)
    info = client.info()
    assert info.primary.version == (2, 0, 0, 0)
    assert not info.primary.flags & SlotFlag.CONFIRMED
    with pytest.raises(Refusal) as err:
        client.begin(images.v3)
    assert err.value.code == ErrorCode.BUSY
    client.revert()
    client.reboot()
    client.hello()
    info = client.info()
    assert info.primary.version == (1, 0, 0, 0)
    assert info.primary.flags & SlotFlag.CONFIRMED


def test_revert_after_confirm_goes_back_to_previous_image(images):
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    flash_image(client, images.v2, confirm=True)
    client.revert()
    assert client.info().secondary.flags & SlotFlag.PENDING_REVERT
    client.reboot()
    client.hello()
    assert client.info().primary.version == (1, 0, 0, 0)
    mcu.power_on()
    assert mcu.boot.image.version == (1, 0, 0, 0)


def test_revert_refused_once_a_new_upload_started(images):
    client = direct_client(fresh_mcu(images))
    flash_image(client, images.v2, confirm=True)
    client.begin(images.v3)
    with pytest.raises(Refusal) as err:
        client.revert()
    assert err.value.code == ErrorCode.NO_IMAGE


def test_flashing_the_running_image_again_only_confirms(images):
    client = direct_client(fresh_mcu(images))
    flash_image(client, images.v2, confirm=False)
    result = flash_image(client, images.v2, confirm=True)
    assert result.bytes_sent == 0
    assert client.info().primary.flags & SlotFlag.CONFIRMED


def test_image_whose_model_does_not_run_is_reverted(images):
    mcu = fresh_mcu(images)
    client = direct_client(mcu)
    with pytest.raises(Refusal) as err:
        flash_image(client, images.junk, confirm=True)
    assert err.value.code == ErrorCode.MODEL
    info = client.info()
    assert info.primary.version == (1, 0, 0, 0)
    assert info.primary.flags & SlotFlag.CONFIRMED


wire_input = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda kind, payload: encode_frame(Frame(kind, 7, payload)),
        st.sampled_from([int(kind) for kind in msg.MsgType]),
        st.binary(max_size=60),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(wire_input, max_size=8))
def test_mcu_answers_any_input_with_well_formed_frames(images, chunks):
    mcu = fresh_mcu(images)
    replies = mcu.receive(encode_frame(msg.to_frame(msg.Hello(), 1)))
    for chunk in chunks:
        replies += mcu.receive(chunk)
        if mcu.reboot_pending:
            mcu.power_on()
            replies += mcu.receive(encode_frame(msg.to_frame(msg.Hello(), 1)))
    for item in FrameDecoder(msg.MAX_FRAME).feed(replies):
        assert isinstance(item, Frame)
        msg.decode(item)
    assert mcu.boot.image is not None


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NoDevice("No such file"), "no device at /dev/ttyX"),
        (NoAnswer("no reply to HELLO"), "no answer from the device at /dev/ttyX"),
        (WrongProtocol("no valid frame"), "does not speak the edgefleet serial protocol"),
        (ImageTooLarge("99 bytes"), "m.bin is too large for the slot"),
        (Refusal("BEGIN", ErrorCode.TOO_LARGE, "x"), "m.bin is too large for the slot"),
        (Refusal("FINISH", ErrorCode.HASH_MISMATCH, "x"), "hash mismatch"),
        (Refusal("FINISH", ErrorCode.SIGNATURE, "x"), "signature refused"),
        (LinkLost("reset"), "lost the link to the device at /dev/ttyX"),
    ],
)
def test_each_failure_is_one_clear_line(error, expected):
    line = explain(error, "/dev/ttyX", "m.bin")
    assert expected in line
    assert "\n" not in line
