"""Session fixtures of the MCU tests."""

from __future__ import annotations

import shutil

import pytest

from firmware_sim import qemu_harness
from firmware_sim.images import IMGTOOL
from tests.mcu.mcu_support import Images


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Images:
    """Keys and images made once with the real imgtool."""
    if shutil.which(IMGTOOL) is None:
        pytest.fail("imgtool is part of the dev extra and must be installed")
    return Images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def qemu_firmware(images):
    """The QEMU firmware, trusting the key the ``images`` are signed with."""
    reason = qemu_harness.missing_tools()
    if reason:
        pytest.skip(f"QEMU target unavailable: {reason}")
    return qemu_harness.build_firmware(images.key)
