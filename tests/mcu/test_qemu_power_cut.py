"""Power cut at every flash operation of an update on the QEMU target.

The firmware counts its own flash operations (across reboots) and stops QEMU at the chosen one,
optionally half done; QEMU is then started again on the same flash file. Small two-sector images
keep the run short; the Python simulator's test covers full-size images.
"""

from __future__ import annotations

import hashlib

import pytest

from agent.mcu.client import LinkConfig, McuClient
from agent.mcu.errors import McuError
from agent.mcu.flasher import flash_image
from agent.mcu.transport import open_transport
from firmware_sim import qemu_harness
from protocol.serial.messages import SlotFlag, SlotInfo

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def firmware(qemu_firmware):
    return qemu_firmware


def session(qemu, run, timeout: float = 0.5):
    transport = open_transport(qemu.port, 115200)
    try:
        return run(McuClient(transport, LinkConfig(timeout=timeout, retries=2)))
    finally:
        transport.close()


def update(client: McuClient, image: bytes):
    return flash_image(client, image, confirm=True, boot_timeout=5)


def primary(client: McuClient) -> SlotInfo:
    client.hello()
    return client.info().primary


@pytest.mark.parametrize("torn", [False, True], ids=["clean-cut", "torn-write"])
def test_cut_anywhere_in_update_on_qemu(firmware, tmp_path, images, torn):
    old, new = images.small1, images.small2
    known = {hashlib.sha256(old).digest(): "old", hashlib.sha256(new).digest(): "new"}
    qemu = qemu_harness.QemuMcu(firmware, tmp_path)
    qemu.program(old)
    qemu.arm_power_cut()
    seen = set()
    try:
        qemu.start()
        session(qemu, lambda client: update(client, new))
        qemu.stop()
        total = qemu.operations()
        assert total > 20
        for at in range(1, total + 1):
            qemu.program(old)
            qemu.arm_power_cut(at, torn)
            qemu.start()
            with pytest.raises(McuError):
                session(qemu, lambda client: update(client, new))
            assert qemu.wait_for_power_loss(5), f"no power cut at operation {at}"
            qemu.disarm_power_cut()
            qemu.start()
            slot = session(qemu, primary, timeout=1.0)
            assert slot.sha256 in known, f"cut at {at}: primary holds neither image"
            seen.add(known[slot.sha256])
            session(qemu, lambda client: update(client, new), timeout=1.0)
            qemu.power_cycle()
            slot = session(qemu, primary, timeout=1.0)
            assert known.get(slot.sha256) == "new" and slot.flags & SlotFlag.CONFIRMED
            qemu.stop()
    finally:
        qemu.stop()
    assert seen == {"old", "new"}
