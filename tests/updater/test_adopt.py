"""A device set up the README's way (its model file named in agent.toml) takes that model as
the incumbent of a slot at its first start, unless the verified metadata says the release has
other bytes."""

from __future__ import annotations

import shutil

from agent.updater.device import UpdaterDevice
from agent.updater.manager import UpdateConfig, UpdateManager
from edgefleet.models import model_path
from tests.updater.support import sha


def manager(state_dir, root) -> UpdateManager:
    return UpdateManager(UpdateConfig(state_dir=state_dir, trusted_root=root))


async def test_the_configured_model_becomes_the_incumbent(world, tmp_path):
    state_dir = tmp_path / "update"
    async with manager(state_dir, world.root) as updates:
        record = await updates.adopt(model_path("kws_f32_v1"), "kws", 1)
        assert (record.target, record.version, record.sha256) == ("kws/1.tflite", 1, world.v1)
        assert await updates.adopt(model_path("kws_f32_v2_head"), "kws", 1) is None  # once
    device = UpdaterDevice(state_dir)
    assert device.slots.pointer().active == record and device.slots.holds(record)
    assert device.versions.load() == {"kws": 1}


async def test_a_file_that_is_not_the_signed_release_is_not_adopted(world, tmp_path):
    """The verified metadata (here from an earlier refresh) lists kws 1 with other bytes."""
    state_dir = tmp_path / "update"
    shutil.copytree(world.template / "tuf", state_dir / "tuf")
    async with manager(state_dir, world.root) as updates:
        assert await updates.adopt(model_path("kws_f32_v2_head"), "kws", 1) is None
        assert updates.active_model() is None
        record = await updates.adopt(model_path("kws_f32_v1"), "kws", 1)
    assert record.sha256 == sha(model_path("kws_f32_v1").read_bytes()) == world.v1
