"""The real ``smpmgr`` CLI against the QEMU firmware's SMP build (``fw-smp.elf``), through a pty
relayed to QEMU's UART socket: upload, state read, test, reset, confirm, revert of an
unconfirmed test, and refusal of an image no trusted key signed."""

from __future__ import annotations

import pytest

from firmware_sim import qemu_harness
from protocol.serial.smp_image import image_hash
from tests.mcu.smp_support import PtyRelay, read_states, smpmgr

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def smp_firmware(images):
    reason = qemu_harness.missing_tools()
    if reason:
        pytest.skip(f"QEMU target unavailable: {reason}")
    return qemu_harness.build_firmware(images.key, protocol="smp")


@pytest.fixture
def port(smp_firmware, images, tmp_path):
    qemu = qemu_harness.QemuMcu(smp_firmware, tmp_path)
    qemu.program(images.v1)
    relay = PtyRelay(qemu.start())
    yield relay.port
    relay.close()
    qemu.stop()


def ok(done) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Error" not in done.stdout, done.stdout
    return done.stdout


def test_smpmgr_uploads_tests_resets_and_confirms_on_qemu(port, images):
    ok(smpmgr(port, "image", "upload", str(images.path("v2"))))
    states = read_states(port)
    assert states[0]["version"] == "1.0.0" and states[0]["active"] and states[0]["confirmed"]
    assert states[1]["version"] == "2.0.0" and states[1]["hash"] == image_hash(images.v2)
    ok(smpmgr(port, "image", "state-write", image_hash(images.v2).hex()))
    ok(smpmgr(port, "os", "reset"))
    states = read_states(port)
    assert states[0]["version"] == "2.0.0" and states[0]["active"]
    assert not states[0]["confirmed"] and states[1]["confirmed"]  # on trial
    ok(smpmgr(port, "image", "state-write", "--confirm"))
    ok(smpmgr(port, "os", "reset"))
    states = read_states(port)
    assert states[0]["version"] == "2.0.0" and states[0]["confirmed"]


def test_untrusted_image_refused_and_unconfirmed_test_reverted_on_qemu(port, images):
    ok(smpmgr(port, "image", "upload", str(images.path("foreign"))))
    refused = smpmgr(port, "image", "state-write", image_hash(images.foreign).hex())
    assert "INVALID_TLV" in refused.stdout, refused.stdout
    ok(smpmgr(port, "image", "upload", str(images.path("small2"))))
    ok(smpmgr(port, "image", "state-write", image_hash(images.small2).hex()))
    ok(smpmgr(port, "os", "reset"))
    assert read_states(port)[0]["version"] == "0.2.0"  # on trial, not confirmed
    ok(smpmgr(port, "os", "reset"))
    states = read_states(port)
    assert states[0]["version"] == "1.0.0" and states[0]["confirmed"]
