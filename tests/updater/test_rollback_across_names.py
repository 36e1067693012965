"""Rollback protection across model names, through the real updater and a real repository: a
device runs only the names its configuration allows, and remembers the highest version of each
name it ever committed, so ``kws/5 -> other/1 -> kws/1`` is refused at the last step unless the
targets key signed ``kws/1`` as a rollback."""

from __future__ import annotations

import json

import pytest

from agent.updater.device import UpdaterDevice
from agent.updater.manager import UpdateConfig, UpdateManager
from agent.updater.states import State
from agent.updater.versions import CommittedVersions, VersionsError
from firmware_sim.fleet.releases import sign_model
from tests.updater.conftest import open_world
from tests.updater.support import FAST, assert_consistent, final, model, release, sha, worker


def sign_names(repo) -> None:
    """kws 5 (beside the world's kws 1 and 2) and a model of another name, other 1."""
    release(repo, model("kws_f32_v2_full"), 5)
    sign_model(repo, model("kws_int8_v1"), "other", 1, FAST)


@pytest.fixture
def names(tmp_path):
    with open_world(tmp_path / "world", sign_names) as opened:
        yield opened


async def take(manager: UpdateManager, url: str, target: str) -> State:
    """Offer ``target``; a model on trial is committed, as probation would."""
    state = await manager.offer(url, target)
    if state == State.TRIAL:
        state = await manager.commit()
    return state


async def test_leaving_a_name_and_coming_back_is_no_way_down(names, tmp_path):
    state_dir, seen = names.device(tmp_path), []
    config = UpdateConfig(state_dir, names.root, allowed_models=("kws", "other"))
    async with UpdateManager(config, seen.append) as manager:
        assert await take(manager, names.url, "kws/5.tflite") == State.COMMITTED
        assert await take(manager, names.url, "other/1.tflite") == State.COMMITTED
        assert await take(manager, names.url, "kws/1.tflite") == State.REFUSED
    refused = seen[-1]
    assert refused.kind == "update_refused" and refused.detail["target"] == "kws/1.tflite"
    assert refused.detail["reason"] == (
        "downgrade: version 1 is older than kws 5, which this device committed"
    )
    assert assert_consistent(state_dir, {sha(model("kws_int8_v1"))})[1] == State.REFUSED
    assert CommittedVersions(UpdaterDevice(state_dir).layout.versions).load() == {
        "kws": 5,
        "other": 1,
    }


async def test_a_name_the_configuration_does_not_allow_is_refused(names, tmp_path):
    """With no ``allowed_models``, a device runs the name of the model it runs now."""
    state_dir, seen = names.device(tmp_path), []
    async with UpdateManager(UpdateConfig(state_dir, names.root), seen.append) as manager:
        assert await take(manager, names.url, "other/1.tflite") == State.REFUSED
        assert seen[-1].detail["reason"] == (
            "not allowed: model 'other' is not one this device runs (allowed: kws)"
        )
        assert await take(manager, names.url, "kws/5.tflite") == State.COMMITTED
    config = UpdateConfig(state_dir, names.root, allowed_models=("other",))
    async with UpdateManager(config, seen.append) as manager:
        assert await take(manager, names.url, "kws/2.tflite") == State.REFUSED
    assert seen[-1].detail["reason"].startswith("not allowed: model 'kws'")


def test_a_signed_rollback_of_that_name_may_go_back(names, tmp_path):
    state_dir = names.device(tmp_path)
    run = ("--allow-model", "kws", "--allow-model", "other", "run", "--repository", names.url)
    for target in ("kws/5.tflite", "other/1.tflite"):
        assert final(worker(state_dir, names.root, *run, "--target", target))["state"] == "TRIAL"
        assert final(worker(state_dir, names.root, "finish", "--commit"))["state"] == "COMMITTED"
    names.repo.sign_rollback("kws", 1)
    result = final(worker(state_dir, names.root, *run, "--target", "kws/1.tflite"))
    assert result["state"] == "TRIAL"
    assert final(worker(state_dir, names.root, "finish", "--commit"))["state"] == "COMMITTED"
    # The record keeps the highest: kws 2, not signed as a rollback, is still refused.
    result = final(worker(state_dir, names.root, *run, "--target", "kws/2.tflite"))
    assert result["state"] == "REFUSED" and "older than kws 5" in result["reason"]


def test_the_record_survives_a_crash_at_every_step_of_its_write(names, tmp_path):
    """The commit's step writes the record; killed anywhere in it, recovery writes it again."""
    for step in ("tmp_written", "renamed", "dir_synced"):
        state_dir = names.device(tmp_path / step)
        run = ("run", "--repository", names.url, "--target", "kws/5.tflite")
        assert final(worker(state_dir, names.root, *run))["state"] == "TRIAL"
        killed = worker(state_dir, names.root, "finish", "--commit", hook=f"versions.{step}")
        assert killed.returncode == -9
        assert final(worker(state_dir, names.root, "boot"))["state"] == "COMMITTED"
        assert CommittedVersions(UpdaterDevice(state_dir).layout.versions).load() == {"kws": 5}


def test_an_unreadable_record_refuses_every_offer(world, tmp_path):
    state_dir = world.device(tmp_path)
    versions = UpdaterDevice(state_dir).layout.versions
    versions.write_text(json.dumps({"format": 1, "highest": {"kws": "five"}}))
    with pytest.raises(VersionsError):
        CommittedVersions(versions).load()
    result = final(worker(state_dir, world.root, "run", "--repository", world.url,
                          "--target", "kws/2.tflite"))  # fmt: skip
    assert result["state"] == "REFUSED" and "cannot be judged" in result["reason"]
