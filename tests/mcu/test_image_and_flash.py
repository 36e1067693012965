"""Image checks on real imgtool output, bootloader refusals, model fit, flash strictness."""

from __future__ import annotations

import pytest

from agent.mcu.flasher import flash_image
from edgefleet.models import model_path
from firmware_sim import bootloader
from firmware_sim.flash import ERASED, Flash, FlashError, Geometry, PowerCut, PowerLoss
from firmware_sim.layout import Slot
from firmware_sim.mcu import SimulatedMcu
from firmware_sim.mcuboot_image import (
    ImageError,
    SignatureError,
    image_extent,
    load_public_key,
    verify,
)
from firmware_sim.model import ModelRunner
from tests.mcu.mcu_support import LAYOUT, direct_client, factory_flash, mcu_config


def trusted(images):
    return [load_public_key(images.key.read_bytes())]


def test_imgtool_image_verifies(images):
    image = verify(images.v2, trusted(images))
    assert image.version == (2, 0, 0, 0)
    assert image.signed
    assert image.total_size == len(images.v2) == image_extent(images.v2 + b"\xff" * 100)


def test_other_key_is_refused_as_signature(images):
    with pytest.raises(SignatureError):
        verify(images.foreign, trusted(images))
    assert verify(images.foreign, trusted(images), require_signature=False).signed is False


@pytest.mark.parametrize("where", ["header", "payload", "hash_tlv", "signature"])
def test_any_flipped_byte_is_refused(images, where):
    data = bytearray(images.v2)
    offsets = {"header": 20, "payload": 4000, "hash_tlv": len(data) - 100, "signature": -10}
    data[offsets[where]] ^= 0x40
    with pytest.raises(ImageError):
        verify(bytes(data), trusted(images))


def test_truncated_image_is_refused(images):
    for cut in (0, 16, 600, len(images.v2) - 1):
        with pytest.raises(ImageError):
            verify(images.v2[:cut], trusted(images))


def test_flash_refuses_write_onto_written_bytes():
    flash = Flash(Geometry(sector_size=256, sector_count=2, write_align=8))
    flash.write(0, b"\x00" * 8)
    with pytest.raises(FlashError, match="not erased"):
        flash.write(0, b"\xff" * 8)
    flash.erase(0)
    assert flash.read(0, 256) == bytes([ERASED]) * 256


@pytest.mark.parametrize(("offset", "length"), [(4, 8), (0, 12), (508, 8)])
def test_flash_refuses_misaligned_or_outside_writes(offset, length):
    flash = Flash(Geometry(sector_size=256, sector_count=2, write_align=8))
    with pytest.raises(FlashError):
        flash.write(offset, b"\x00" * length)


def test_torn_write_leaves_a_prefix_and_stops():
    flash = Flash(Geometry(sector_size=256, sector_count=2, write_align=8))
    flash.power = PowerCut(at=1, torn=True)
    with pytest.raises(PowerLoss):
        flash.write(0, b"\x00" * 64)
    assert flash.read(0, 64) == b"\x00" * 32 + b"\xff" * 32


def test_power_cut_counts_every_operation():
    flash = factory_flash(b"\x01" * 64, LAYOUT)
    flash.power = PowerCut(at=3)
    flash.erase(5)
    flash.write(5 * LAYOUT.sector_size, b"\x00" * 8)
    with pytest.raises(PowerLoss):
        flash.erase(6)
    assert flash.power.count == 3


def test_file_backed_flash_persists(tmp_path):
    geometry = Geometry(sector_size=256, sector_count=2, write_align=8)
    flash = Flash.open_file(tmp_path / "flash.bin", geometry)
    flash.write(256, b"\x12" * 8)
    again = Flash.open_file(tmp_path / "flash.bin", geometry)
    assert again.read(256, 9) == b"\x12" * 8 + b"\xff"


def test_bootloader_refuses_a_swap_to_an_image_no_trusted_key_signed(images):
    flash = factory_flash(images.v1, LAYOUT)
    flash.write(LAYOUT.base(Slot.SECONDARY), images.foreign + b"\xff" * (-len(images.foreign) % 8))
    bootloader.request_test(flash, LAYOUT)
    result = bootloader.boot(flash, LAYOUT, images.verifier())
    assert result.image.version == (1, 0, 0, 0)
    assert result.trailers.request is None
    assert result.trailers.swap_type is None


def test_unconfirmed_image_stays_when_there_is_nothing_valid_to_revert_to(images):
    flash = factory_flash(images.v1, LAYOUT)
    mcu = SimulatedMcu(flash, mcu_config(images, model_runtime=False))
    flash_image(direct_client(mcu), images.v2, confirm=False)
    assert mcu.boot.trailers.on_trial
    flash.erase(LAYOUT.sector(Slot.SECONDARY, 2))
    result = bootloader.boot(flash, LAYOUT, images.verifier())
    assert result.image.version == (2, 0, 0, 0)
    assert not result.trailers.on_trial
    assert bootloader.boot(flash, LAYOUT, images.verifier()).image.version == (2, 0, 0, 0)


@pytest.mark.parametrize(("arena", "state"), [(6 * 1024, "TOO_LARGE"), (12 * 1024, "LOADED")])
def test_model_fit_is_judged_by_its_arena(arena, state):
    model = model_path("kws_int8_v1").read_bytes()
    assert ModelRunner(model, arena).state.name == state


def test_bytes_that_are_no_model_are_invalid():
    assert ModelRunner(b"\x01" * 2048, 64 * 1024).state.name == "INVALID"
