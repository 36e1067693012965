"""Power cut at every flash operation of an update: the MCU always boots a whole, verified image.

A clean run counts the flash operations; then, for every index 1..N (and again with the cut
operation left half done), a fresh device runs the same update until the power goes, boots, and
must run the old or the new image, never a partial one. The host then finishes the job from
wherever the cut left it. The upload runs both raw and compressed (deflate blocks inflated by
the MCU), each enumerated in full. The MCU runs without its model runtime here: these tests are
about flash and bootloader, and loading the model at each of the many boots only costs time.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from functools import partial

import pytest

from agent.mcu.flasher import flash_image
from firmware_sim import bootloader
from firmware_sim.flash import Flash, PowerCut, PowerLoss
from firmware_sim.layout import Slot
from firmware_sim.mcu import SimulatedMcu
from protocol.serial.messages import SlotFlag
from tests.mcu.mcu_support import LAYOUT, direct_client, factory_flash, mcu_config


def boot_mcu(flash, images) -> SimulatedMcu:
    return SimulatedMcu(flash, mcu_config(images, model_runtime=False))


def running_image(mcu: SimulatedMcu, images) -> str:
    """Which known image the MCU booted ("v1"/"v2"); fails on anything else."""
    assert mcu.boot.image is not None, "no verified image in the primary slot"
    primary = mcu.config.layout.base(Slot.PRIMARY)
    stored = mcu.flash.read(primary, mcu.boot.image.total_size)
    known = {hashlib.sha256(images.v1).digest(): "v1", hashlib.sha256(images.v2).digest(): "v2"}
    name = known.get(hashlib.sha256(stored).digest())
    assert name is not None, "the primary slot holds neither the old nor the new image"
    return name


def update_and_confirm(flash, images, deflate: bool = True) -> None:
    mcu = boot_mcu(flash, images)
    result = flash_image(direct_client(mcu, deflate=deflate), images.v2, confirm=True)
    assert result.compressed is deflate


def update_then_reboot_unconfirmed(flash, images) -> None:
    mcu = boot_mcu(flash, images)
    client = direct_client(mcu)
    flash_image(client, images.v2, confirm=False)
    client.reboot()
    client.hello()


def count_operations(images, scenario) -> int:
    flash = factory_flash(images.v1)
    scenario(flash, images)
    return flash.power.count


def cut_at(images, scenario, at: int, torn: bool):
    flash = factory_flash(images.v1)
    flash.power = PowerCut(at=at, torn=torn)
    with pytest.raises(PowerLoss):
        scenario(flash, images)
    flash.power = PowerCut()
    return flash


@pytest.mark.parametrize("deflate", [False, True], ids=["raw", "deflate"])
@pytest.mark.parametrize("torn", [False, True], ids=["clean-cut", "torn-write"])
def test_cut_anywhere_in_upload_test_swap_confirm(images, torn, deflate):
    scenario = partial(update_and_confirm, deflate=deflate)
    total = count_operations(images, scenario)
    assert total > 60
    booted = Counter()
    for at in range(1, total + 1):
        flash = cut_at(images, scenario, at, torn)
        mcu = boot_mcu(flash, images)
        booted[running_image(mcu, images)] += 1
        result = flash_image(direct_client(mcu, deflate=deflate), images.v2, confirm=True)
        assert result.confirmed
        mcu.power_on()
        assert running_image(mcu, images) == "v2", f"cut at {at}: not on v2 after finishing"
        assert mcu.boot.trailers.on_trial is False
    assert booted["v1"] and booted["v2"], booted


@pytest.mark.parametrize("torn", [False, True], ids=["clean-cut", "torn-write"])
def test_cut_anywhere_in_trial_and_revert(images, torn):
    total = count_operations(images, update_then_reboot_unconfirmed)
    clean = factory_flash(images.v1)
    update_then_reboot_unconfirmed(clean, images)
    assert running_image(boot_mcu(clean, images), images) == "v1"
    booted = Counter()
    for at in range(1, total + 1):
        flash = cut_at(images, update_then_reboot_unconfirmed, at, torn)
        mcu = boot_mcu(flash, images)
        booted[running_image(mcu, images)] += 1
        mcu.power_on()
        assert running_image(mcu, images) == "v1", f"cut at {at}: unconfirmed v2 not reverted"
    assert booted["v1"] and booted["v2"], booted


def test_cut_during_recovery_of_a_cut(images):
    """Two faults: the boot that finishes an interrupted swap loses power again, anywhere."""
    verifier = images.verifier()
    known = {hashlib.sha256(images.v1).digest(), hashlib.sha256(images.v2).digest()}
    total = count_operations(images, update_and_confirm)
    recoveries = 0
    for at in range(1, total + 1):
        after_first = cut_at(images, update_and_confirm, at, torn=True).snapshot()
        probe = Flash(LAYOUT.geometry, bytearray(after_first))
        bootloader.boot(probe, LAYOUT, verifier)
        for second in range(1, probe.power.count + 1):
            flash = Flash(LAYOUT.geometry, bytearray(after_first))
            flash.power = PowerCut(at=second, torn=True)
            with pytest.raises(PowerLoss):
                bootloader.boot(flash, LAYOUT, verifier)
            flash.power = PowerCut()
            image = bootloader.boot(flash, LAYOUT, verifier).image
            assert image is not None, f"cuts at {at} then {second}: nothing to boot"
            stored = flash.read(LAYOUT.base(Slot.PRIMARY), image.total_size)
            assert hashlib.sha256(stored).digest() in known
            recoveries += 1
    assert recoveries > 100


def test_confirmed_update_survives_reboots(images):
    flash = factory_flash(images.v1)
    update_and_confirm(flash, images)
    mcu = boot_mcu(flash, images)
    for _ in range(3):
        mcu.power_on()
        assert running_image(mcu, images) == "v2"
    client = direct_client(mcu)
    client.hello()
    assert client.info().primary.flags & SlotFlag.CONFIRMED
