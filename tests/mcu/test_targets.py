"""Upload, resume and revert against both targets: the Python simulator and the QEMU firmware.

Both are reached the same way, over a TCP socket, and both are power cycled for real: the
simulator boots again on the same flash, QEMU is killed and started on the same flash file.
"""

from __future__ import annotations

import hashlib

import pytest

from agent.mcu.client import LinkConfig, McuClient
from agent.mcu.errors import Refusal
from agent.mcu.flasher import flash_image
from agent.mcu.transport import open_transport
from firmware_sim import bootloader, qemu_harness
from firmware_sim.flash import Flash
from firmware_sim.layout import Layout, Slot
from firmware_sim.mcu import SimulatedMcu
from firmware_sim.uart import UartServer
from protocol.serial import messages as msg
from protocol.serial.messages import ErrorCode, SlotFlag
from tests.mcu.mcu_support import factory_flash, interrupt_upload, mcu_config

QEMU_LAYOUT = Layout(sector_size=4096, slot_sectors=qemu_harness.SLOT_SECTORS, write_align=8)


class SimTarget:
    def __init__(self, images) -> None:
        mcu = SimulatedMcu(
            factory_flash(images.v1, QEMU_LAYOUT), mcu_config(images, layout=QEMU_LAYOUT)
        )
        self._server = UartServer(mcu, None, "socket")
        self._server.start()
        self.port = self._server.port

    def power_cycle(self) -> None:
        self._server.power_cycle()

    def close(self) -> None:
        self._server.stop()


class QemuTarget:
    def __init__(self, images, firmware, state_dir) -> None:
        self._qemu = qemu_harness.QemuMcu(firmware, state_dir)
        self._qemu.program(images.v1)
        self.port = self._qemu.start()

    def power_cycle(self) -> None:
        self.port = self._qemu.power_cycle()

    def close(self) -> None:
        self._qemu.stop()


@pytest.fixture(params=["sim", pytest.param("qemu", marks=pytest.mark.qemu)])
def target(request, images, tmp_path):
    if request.param == "sim":
        made = SimTarget(images)
    else:
        made = QemuTarget(images, request.getfixturevalue("qemu_firmware"), tmp_path)
    yield made
    made.close()


class Session:
    """A connection to the target, closed and reopened around power cycles."""

    def __init__(self, target) -> None:
        self.target = target
        self.transport = open_transport(target.port, 115200)
        self.client = McuClient(self.transport, LinkConfig(timeout=1.0))

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
def connect(target):
    sessions = []

    def open_session() -> McuClient:
        for old in sessions:
            old.close()
        session = Session(target)
        sessions.append(session)
        return session.client

    yield open_session
    sessions[-1].close()


def primary(client: McuClient) -> msg.SlotInfo:
    client.hello()
    return client.info().primary


def test_upload_test_confirm_and_survive_power_cycle(target, connect, images):
    client = connect()
    result = flash_image(client, images.v2, confirm=True)
    assert result.version == "2.0.0+0"
    target.power_cycle()
    slot = primary(connect())
    assert slot.version == (2, 0, 0, 0)
    assert slot.sha256 == hashlib.sha256(images.v2).digest()
    assert slot.flags & SlotFlag.CONFIRMED


def test_resume_after_interrupt_and_power_cut(target, connect, images):
    client = connect()
    client.hello()
    interrupt_upload(client, images.v2, after=18000)
    target.power_cycle()
    result = flash_image(connect(), images.v2, confirm=True)
    assert result.resumed_from >= 16384
    assert result.bytes_sent == len(images.v2) - result.resumed_from
    assert result.version == "2.0.0+0"


def test_unconfirmed_image_is_reverted_by_the_next_boot(target, connect, images):
    result = flash_image(connect(), images.v2, confirm=False)
    assert result.version == "2.0.0+0"
    target.power_cycle()
    slot = primary(connect())
    assert slot.version == (1, 0, 0, 0)
    assert slot.flags & SlotFlag.CONFIRMED


def test_explicit_revert_after_confirm(target, connect, images):
    client = connect()
    flash_image(client, images.v2, confirm=True)
    client.revert()
    client.reboot()
    client.wait_for_boot(10)
    assert client.info().primary.version == (1, 0, 0, 0)
    with pytest.raises(Refusal) as err:
        client.begin(images.big)
    assert err.value.code == ErrorCode.TOO_LARGE


def test_hash_mismatch_is_refused(target, connect, images):
    client = connect()
    client.hello()
    client.request(msg.Begin(len(images.v2), bytes(32), msg.UploadFlag.RESTART))
    client.send_data(images.v2, 0)
    with pytest.raises(Refusal) as err:
        client.finish()
    assert err.value.code == ErrorCode.HASH_MISMATCH


def tampered_signature(image: bytes) -> bytes:
    """``image`` with one bit of its Ed25519 signature (the last TLV imgtool writes) flipped."""
    out = bytearray(image)
    out[-10] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("kind", ["foreign", "tampered"])
def test_image_not_signed_by_a_trusted_key_is_refused(target, connect, images, kind):
    image = images.foreign if kind == "foreign" else tampered_signature(images.v2)
    client = connect()
    assert client.hello().features & msg.Feature.SIGNATURE
    client.begin(image)
    client.send_data(image, 0)
    with pytest.raises(Refusal) as err:
        client.finish()
    assert err.value.code == ErrorCode.SIGNATURE
    with pytest.raises(Refusal) as err:
        client.test()
    assert err.value.code == ErrorCode.SIGNATURE
    target.power_cycle()
    assert primary(connect()).sha256 == hashlib.sha256(images.v1).digest()


@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["foreign", "tampered"])
def test_bootloader_never_swaps_in_an_untrusted_image(qemu_firmware, images, tmp_path, kind):
    """The swap request is written straight into the flash file, past the application's
    checks: the bootloader itself must refuse the image and drop the request."""
    image = images.foreign if kind == "foreign" else tampered_signature(images.v2)
    qemu = qemu_harness.QemuMcu(qemu_firmware, tmp_path)
    qemu.program(images.v1)
    flash = Flash.open_file(qemu.flash_file, QEMU_LAYOUT.geometry)
    flash.write(QEMU_LAYOUT.base(Slot.SECONDARY), image + b"\xff" * (-len(image) % 8))
    bootloader.request_test(flash, QEMU_LAYOUT)
    del flash
    with qemu:
        transport = open_transport(qemu.port, 115200)
        try:
            client = McuClient(transport, LinkConfig(timeout=1.0))
            slot = primary(client)
            request = client.info().secondary.flags & SlotFlag.PENDING_TEST
        finally:
            transport.close()
    assert slot.sha256 == hashlib.sha256(images.v1).digest()
    assert slot.flags & SlotFlag.CONFIRMED
    assert not request
