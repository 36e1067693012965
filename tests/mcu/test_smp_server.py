"""SMP (mcumgr) on the simulated MCU, in process: the console framing, the image and OS groups
as Zephyr answers them, and a power cut at every flash operation of an SMP update."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smp import image_management as smpimg
from smp import os_management as smpos
from smp import packet as smppacket

from firmware_sim.flash import PowerCut, PowerLoss
from firmware_sim.smp_server import SmpMcu
from protocol.serial import smp_console
from protocol.serial.errors import CodecError
from protocol.serial.smp_image import image_hash, version_text
from tests.mcu.mcu_support import factory_flash
from tests.mcu.smp_support import SmpHost, smp_config

ERR = smpimg.IMG_MGMT_ERR
packets = st.binary(min_size=1, max_size=smp_console.PACKET_BUFFER - 4)


@given(st.lists(packets, max_size=5), st.integers(1, 200))
def test_console_frames_decode_in_any_chunking(items, step):
    wire = b"".join(smp_console.encode(p) for p in items)
    decoder = smp_console.ConsoleDecoder()
    got = []
    for start in range(0, len(wire), step):
        got.extend(decoder.feed(wire[start : start + step]))
    assert got == items


@given(st.binary(max_size=3000))
@settings(max_examples=300)
def test_any_bytes_give_packets_or_codec_errors(data):
    for item in smp_console.ConsoleDecoder().feed(data):
        assert isinstance(item, bytes | CodecError)


@given(packets, st.binary(max_size=80).filter(lambda b: b"\n" not in b))
def test_console_text_between_packets_is_skipped(packet, text):
    wire = text + b"\n" + smp_console.encode(packet) + b"booting...\n"
    assert smp_console.ConsoleDecoder().feed(wire) == [packet]


def test_framing_bounds_and_damage_cost_one_packet():
    big = bytes(400)  # larger than Zephyr's default 384-byte reassembly buffer
    ok = b"\x01\x02\x03"
    decoder = smp_console.ConsoleDecoder()
    items = decoder.feed(smp_console.encode(big) + smp_console.encode(ok))
    assert isinstance(items[0], CodecError) and "out of bounds" in str(items[0])
    assert items[-1] == ok
    long_line = b"".join(smppacket.encode(ok, line_length=300)).replace(b"\n", b"A" * 200 + b"\n")
    assert isinstance(decoder.feed(long_line)[0], CodecError)
    damaged = bytearray(smp_console.encode(b"abcdefgh"))
    damaged[5] ^= 0x01
    assert isinstance(decoder.feed(bytes(damaged))[0], CodecError)
    assert decoder.feed(smp_console.encode(ok)) == [ok]


def test_version_text_is_zephyrs():
    assert version_text((1, 2, 3, 0)) == "1.2.3"
    assert version_text((1, 2, 3, 7)) == "1.2.3.7"


@pytest.fixture
def host(images) -> SmpHost:
    return SmpHost(SmpMcu(factory_flash(images.v1), smp_config(images)))


def test_os_group_echo_params_and_unknown_commands(host):
    assert host.request(smpos.EchoWriteRequest(d="hi")).r == "hi"
    params = host.request(smpos.MCUMgrParametersReadRequest())
    assert (params.buf_size, params.buf_count) == (384, 4)
    unknown = host.request(smpos.DateTimeReadRequest())
    assert unknown.rc == 8  # MGMT_ERR_ENOTSUP


def test_upload_test_reset_confirm(host, images):
    (primary,) = host.states().values()
    assert (primary.version, primary.hash) == ("1.0.0", image_hash(images.v1))
    assert primary.active and primary.confirmed
    assert host.upload(images.v2) == 256  # a new upload: the first chunk was taken
    states = host.states()
    assert states[1].version == "2.0.0" and not states[1].pending
    tested = host.test(images.v2)
    assert tested.images[1].pending and not tested.images[1].permanent
    host.reset()
    states = host.states()
    assert states[0].version == "2.0.0" and states[0].active and not states[0].confirmed
    assert states[1].version == "1.0.0" and states[1].confirmed
    assert host.upload(images.v3).err.rc == ERR.NO_FREE_SLOT  # on trial: slot 1 is in use
    assert host.confirm().images[0].confirmed
    host.reset()
    assert host.states()[0].version == "2.0.0"


def test_unconfirmed_image_reverts_at_the_next_reset(host, images):
    host.upload(images.v2)
    host.test(images.v2)
    host.reset()
    host.reset()
    states = host.states()
    assert states[0].version == "1.0.0" and states[0].confirmed


def test_state_write_refusals(host, images):
    host.upload(images.v2)
    assert host.test(images.v1).err.rc == ERR.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED
    assert host.test(images.v3).err.rc == ERR.HASH_NOT_FOUND
    permanent = smpimg.ImageStatesWriteRequest(hash=image_hash(images.v2), confirm=True)
    assert host.request(permanent).err.rc == ERR.IMAGE_CONFIRMATION_DENIED
    no_hash = host.request(smpimg.ImageStatesWriteRequest())
    assert no_hash.err.rc == ERR.INVALID_HASH


def test_an_image_signed_by_an_untrusted_key_is_refused_for_test(host, images):
    host.upload(images.foreign)
    assert host.test(images.foreign).err.rc == ERR.INVALID_TLV
    assert not host.states()[1].pending
    host.reset()
    assert host.states()[0].version == "1.0.0"


def test_upload_resumes_from_flash_after_a_power_cycle(host, images):
    host.upload(images.v2, stop_after=18000)
    host.mcu.power_on()
    resumed = host.upload(images.v2)
    assert resumed == 16384  # the sectors flagged in flash; the RAM buffer was lost
    assert host.upload(images.v3) == 256  # another image starts over
    assert host.mcu.upload_bytes < 2 * len(images.v2) + len(images.v3)


def test_erase_clears_the_secondary_slot(host, images):
    host.upload(images.v2)
    host.request(smpimg.ImageEraseRequest())
    assert set(host.states()) == {0}


def update(host: SmpHost, image: bytes) -> None:
    """What a host does, as often as it takes: upload (resuming), test, reset, confirm."""
    states = host.states()
    if states[0].hash != image_hash(image):
        if not states[0].confirmed:
            host.reset()  # on trial from an update the power cut: the reset reverts it
            return update(host, image)
        host.upload(image)
        host.test(image)
        host.reset()
    host.confirm()


def test_power_cut_at_every_flash_operation_of_an_smp_update(images):
    clean = SmpMcu(factory_flash(images.small1), smp_config(images))
    update(SmpHost(clean), images.small2)
    operations = clean.flash.power.count
    assert operations > 10
    for at in range(1, operations + 1):
        for torn in (False, True):
            mcu = SmpMcu(factory_flash(images.small1), smp_config(images))
            mcu.flash.power = PowerCut(at=at, torn=torn)
            host = SmpHost(mcu)
            with pytest.raises(PowerLoss):
                update(host, images.small2)
            mcu.power_on()
            assert mcu.boot.image is not None, (at, torn)
            assert mcu.boot.image.version in ((0, 1, 0, 0), (0, 2, 0, 0))
            update(host, images.small2)
            states = host.states()
            assert states[0].version == "0.2.0" and states[0].confirmed, (at, torn)
            assert hashlib.sha256(images.small2).digest()  # the image itself is unchanged
