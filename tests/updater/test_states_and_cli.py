"""The transition table, the worker crash handling of the manager, and ``edgefleet update``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.updater.manager import UpdateConfig, UpdateManager
from agent.updater.states import TRANSITIONS, InvalidTransition, State, Step, next_state
from tests.updater.support import REPO, assert_consistent

HAPPY_PATH = [
    (Step.OFFER, State.OFFERED),
    (Step.PLANNED, State.DOWNLOADING),
    (Step.FETCHED, State.VERIFIED),
    (Step.INSTALLED, State.INSTALLED),
    (Step.GATE_PASSED, State.TRIAL),
    (Step.PROBATION_PASSED, State.COMMITTED),
]


def test_the_happy_path_follows_the_table():
    state = State.IDLE
    for event, expected in HAPPY_PATH:
        state = next_state(state, event)
        assert state == expected


def test_every_state_is_reachable_and_an_unknown_event_raises():
    assert {State.IDLE} | set(TRANSITIONS.values()) == set(State)
    with pytest.raises(InvalidTransition):
        next_state(State.TRIAL, Step.OFFER)
    with pytest.raises(InvalidTransition):
        next_state(State.COMMITTED, Step.ROLLBACK)


def test_a_saved_state_without_what_its_state_needs_is_unreadable(tmp_path, capsys):
    """A file in DOWNLOADING with no offer (edited, or written by a broken agent) stops the
    worker with one line naming what is missing, not a traceback from deep in a handler."""
    from agent.updater import worker
    from agent.updater.store import STATE_FORMAT, Saved, UnknownState

    with pytest.raises(UnknownState, match="saved state TRIAL has no candidate"):
        Saved(State.TRIAL).require_candidate()
    (tmp_path / "state.json").write_text(
        json.dumps(Saved(State.DOWNLOADING).to_json() | {"format": STATE_FORMAT})
    )
    code = worker.main(["--state-dir", str(tmp_path), "--root", str(tmp_path / "root.json"), "run"])
    assert code == worker.EXIT_NOT_ALLOWED
    assert "saved state DOWNLOADING has no offer" in capsys.readouterr().err


async def test_a_worker_that_keeps_dying_is_given_up(world, tmp_path, monkeypatch):
    """A crash in the child (here SIGKILL at install) never reaches the daemon; the update
    resumes, and after ``max_worker_crashes`` deaths it is refused."""
    state_dir, seen = world.device(tmp_path), []
    monkeypatch.setenv("EDGEFLEET_FAULT_HOOK", "install.renamed")
    config = UpdateConfig(state_dir, world.root, max_worker_crashes=2)
    async with UpdateManager(config, seen.append) as manager:
        assert await manager.offer(world.url, "kws/2.tflite") == State.VERIFIED
        assert manager.interrupted
        assert await manager.resume() == State.REFUSED
    assert seen[-1].detail["reason"] == "update worker died 2 times"
    assert assert_consistent(state_dir, {world.v1})[0] == world.v1
    monkeypatch.delenv("EDGEFLEET_FAULT_HOOK")
    async with UpdateManager(config, seen.append) as manager:
        assert await manager.offer(world.url, "kws/2.tflite") == State.REFUSED  # same offer


def edgefleet(*args: str):
    command = [
        sys.executable,
        "-c",
        "import sys; from edgefleet.cli import main; sys.exit(main())",
        *args,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_the_update_command(world, tmp_path):
    state_dir = world.device(tmp_path)
    common = ("update", "--state-dir", str(state_dir), "--root", str(world.root), "--json")
    result = edgefleet(*common, "--repo", world.url, "--target", "kws/2.tflite")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("update_state") for line in lines[:-1]] == [
        "OFFERED", "DOWNLOADING", "VERIFIED", "INSTALLED", "TRIAL",
    ]  # fmt: skip
    assert lines[-1]["fallback_slot"] == "a" and lines[-1]["active_slot"] == "b"
    result = edgefleet(*common, "--commit")
    assert json.loads(result.stdout.splitlines()[-1])["update_state"] == "COMMITTED"
    result = edgefleet(*common, "--rollback", "no trial")
    assert result.returncode == 2 and "no model on trial" in result.stderr
