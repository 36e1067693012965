"""Kill the update worker with SIGKILL at every registered fault hook, restart it, and check
that the device runs a model that passed its checks and reaches the state the update would
have reached without the crash.

Each scenario is a list of worker commands; re-running them after a crash is safe because the
same offer delivered twice is one update. A clean run of every scenario must pass through every
registered hook, so a hook added to the code is crash-tested without touching this file.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass

import pytest

from agent.updater.device import UpdaterDevice
from agent.updater.faults import HOOKS
from agent.updater.states import State
from tests.updater.support import assert_consistent, assert_runs_gated, final, worker


@dataclass(frozen=True)
class Scenario:
    steps: tuple[tuple[str, ...], ...]
    gated: tuple[str, ...]  # the releases that pass the gate ("v1", "v2")
    end: State
    active: str  # the release active at the end


RUN_V2 = ("run", "--target", "kws/2.tflite")
SCENARIOS = {
    "commit": Scenario((RUN_V2, ("finish", "--commit")), ("v1", "v2"), State.COMMITTED, "v2"),
    "rollback": Scenario(
        (RUN_V2, ("finish", "--rollback", "probation failed")),
        ("v1", "v2"),
        State.ROLLED_BACK,
        "v1",
    ),
    "refused": Scenario((("run", "--target", "kws/3.tflite"),), ("v1",), State.REFUSED, "v1"),
}


def scenario_of(hook: str) -> str:
    if "ROLLED_BACK" in hook or "rollback" in hook:
        return "rollback"
    return "refused" if "REFUSED" in hook else "commit"


def command(world, step: tuple[str, ...]) -> tuple[str, ...]:
    return (*step, "--repository", world.url) if step[0] == "run" else step


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_clean_run_passes_every_hook_of_its_scenario(world, tmp_path, name):
    state_dir, trace = world.device(tmp_path), tmp_path / "trace"
    for step in SCENARIOS[name].steps:
        final(worker(state_dir, world.root, *command(world, step), trace=trace))
    passed = set(trace.read_text().split())
    assert passed <= HOOKS
    assert {h for h in HOOKS if scenario_of(h) == name} <= passed


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_killed_at_every_hook_the_device_recovers(world, tmp_path, hook):
    scenario = SCENARIOS[scenario_of(hook)]
    gated = {getattr(world, release) for release in scenario.gated}
    state_dir = world.device(tmp_path)
    for step in scenario.steps:
        result = worker(state_dir, world.root, *command(world, step), hook=hook)
        if result.returncode == -signal.SIGKILL:
            break
        final(result)
    else:
        pytest.fail(f"the run never reached {hook}")
    assert_runs_gated(state_dir, gated)  # even before any recovery

    final(worker(state_dir, world.root, "boot"))  # the agent starts again
    assert_consistent(state_dir, gated)

    for step in scenario.steps:  # the offer is delivered again; the verdict is given again
        if step[0] == "finish" and UpdaterDevice(state_dir).store.load().state != State.TRIAL:
            continue
        final(worker(state_dir, world.root, *command(world, step)))
    active, state = assert_consistent(state_dir, gated)
    assert (state, active) == (scenario.end, getattr(world, scenario.active))
    saved = json.loads((state_dir / "state.json").read_text())
    assert saved["boots"] <= 1
