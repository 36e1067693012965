"""Update work in a thread (many devices in one process): the same transitions as the child
process, and a power cut armed for one device, or a worker past its time, stops the work at a
fault hook where a kill of the child would have, with the device's files consistent."""

from __future__ import annotations

import threading

import pytest

from agent.updater.faults import DEVICE_FAULTS, DeviceFaults, Interrupted, hook
from agent.updater.manager import UpdateConfig, UpdateManager
from agent.updater.runners import in_thread
from agent.updater.states import State
from tests.updater.support import assert_consistent


def kinds(transitions) -> list[tuple[str, str | None]]:
    return [(t.state.value, t.kind) for t in transitions]


async def test_a_thread_relays_what_the_child_process_relays(world, tmp_path):
    seen: dict[str, list] = {"child": [], "thread": []}
    for way, runner in (("child", None), ("thread", in_thread)):
        state_dir = world.device(tmp_path / way)
        config = UpdateConfig(state_dir, world.root)
        async with UpdateManager(config, seen[way].append, runner=runner) as manager:
            assert await manager.offer(world.url, "kws/2.tflite", "r1") == State.TRIAL
        assert assert_consistent(state_dir, {world.v1, world.v2}) == (world.v2, State.TRIAL)
    assert kinds(seen["thread"]) == kinds(seen["child"])
    assert [t.detail for t in seen["thread"]] == [t.detail for t in seen["child"]]
    assert seen["thread"][-1].detail["rollout"] == "r1"


async def test_a_cut_armed_for_one_device_stops_its_work_right_there(world, tmp_path):
    state_dir = world.device(tmp_path)
    cut_file = tmp_path / "power-cut"
    cut_file.write_text("state.INSTALLED.renamed")
    cuts: list[str] = []
    faults = DeviceFaults(str(cut_file), lambda: cuts.append(threading.current_thread().name))
    token = DEVICE_FAULTS.set(faults)  # the device's context, carried into its threads
    try:
        async with UpdateManager(UpdateConfig(state_dir, world.root), runner=in_thread) as manager:
            assert await manager.offer(world.url, "kws/2.tflite") == State.INSTALLED
    finally:
        DEVICE_FAULTS.reset(token)
    assert len(cuts) == 1 and cuts[0] != threading.current_thread().name
    assert not cut_file.exists() and faults.off.is_set()
    assert assert_consistent(state_dir, {world.v1, world.v2}) == (world.v1, State.INSTALLED)
    async with UpdateManager(UpdateConfig(state_dir, world.root), runner=in_thread) as manager:
        assert await manager.resume() == State.TRIAL  # powered again: the update goes on


async def test_a_thread_past_its_time_stops_at_its_next_hook(world, tmp_path):
    state_dir = world.device(tmp_path)
    seen: list = []
    config = UpdateConfig(state_dir, world.root, worker_timeout_s=0.0)
    async with UpdateManager(config, seen.append, runner=in_thread) as manager:
        assert await manager.offer(world.url, "kws/2.tflite") == State.COMMITTED
    assert seen == []  # stopped before it saved anything
    assert assert_consistent(state_dir, {world.v1}) == (world.v1, State.COMMITTED)


def test_a_powered_off_device_passes_no_hook_and_the_cut_fires_once(tmp_path):
    cut_file = tmp_path / "cut"
    cut_file.write_text("install.renamed")
    cuts: list[int] = []
    faults = DeviceFaults(str(cut_file), lambda: cuts.append(1))
    token = DEVICE_FAULTS.set(faults)
    try:
        hook("install.tmp_written")  # not the armed one
        with pytest.raises(Interrupted, match=r"install\.renamed"):
            hook("install.renamed")
        assert cuts == [1] and not cut_file.exists()
        with pytest.raises(Interrupted):  # the power is off: nothing more is written
            hook("install.dir_synced")
        assert cuts == [1]
    finally:
        DEVICE_FAULTS.reset(token)
    hook("install.renamed")  # other devices (no settings) are untouched
