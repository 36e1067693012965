"""Session fixtures of the MCU tests."""

from __future__ import annotations

import shutil

import pytest

from firmware_sim.images import IMGTOOL
from tests.mcu.mcu_support import Images


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Images:
    """Keys and images made once with the real imgtool."""
    if shutil.which(IMGTOOL) is None:
        pytest.fail("imgtool is part of the dev extra and must be installed")
    return Images(tmp_path_factory.mktemp("images"))
