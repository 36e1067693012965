"""The daemon's update decisions as pure functions: which commands it acts on, when it swaps
models, what probation evidence a chunk gives; the ``[update]`` config; and the lean import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.config import load
from agent.model_runner import ModelChoice, swap_plan
from agent.pipeline import ModelIdentity, Serving, Shadowed, observations
from agent.update_driver import decide
from agent.updater.states import State
from agent.updater.store import Offer
from edgefleet.engine import Result
from edgefleet.errors import UserError
from protocol.topics import Command
from tests.agent.agent_support import REPO

REPOSITORY = "http://127.0.0.1:8080"
OFFER = Offer(REPOSITORY, "kws/2.tflite", "r1")


def update(rollout: str = "r1", version: int = 2) -> Command:
    return Command("c", "update", "kws", version, rollout, REPOSITORY)


@pytest.mark.parametrize(
    ("command", "configured", "job", "state", "expected"),
    [
        (Command("c", "config", settings={"a": 1}), True, None, State.IDLE, "reject"),
        (update(), False, None, None, "reject"),
        (update(), True, None, State.COMMITTED, "act"),
        (update(), True, "r1", State.DOWNLOADING, "ignore"),
        (update("r2"), True, "r1", State.DOWNLOADING, "reject"),
        (update(), True, None, State.TRIAL, "ignore"),
        (update("r2", 3), True, None, State.TRIAL, "reject"),
        (Command("c", "rollback", "kws"), True, None, State.TRIAL, "act"),
        (Command("c", "rollback", "kws"), True, None, State.COMMITTED, "reject"),
        (Command("c", "rollback", "kws"), True, "r1", State.OFFERED, "reject"),
    ],
)
def test_which_commands_the_daemon_acts_on(command, configured, job, state, expected):
    action, reason = decide(command, configured, job, state, OFFER)
    assert action == expected
    assert bool(reason) == (action != "act")


def serving(sha: str, shadow: bool) -> Serving:
    return Serving(None, ModelIdentity("kws", 1, sha), None, object() if shadow else None)


def choice(sha: str, shadow: bool) -> ModelChoice:
    return ModelChoice(Path("m"), "kws", 1, sha, None, Path("i") if shadow else None)


@pytest.mark.parametrize(
    ("running", "wanted", "plan"),
    [
        (None, choice("a", False), "load"),
        (serving("a", False), choice("a", False), "keep"),
        (serving("a", False), choice("b", True), "load"),  # trial starts
        (serving("b", True), choice("b", False), "drop_shadow"),  # trial committed
        (serving("b", True), choice("a", False), "load"),  # trial rolled back
        (serving("b", True), choice("b", True), "keep"),
    ],
)
def test_when_the_daemon_swaps_models(running, wanted, plan):
    assert swap_plan(running, wanted) == plan


def test_probation_evidence_from_a_chunk():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, 0.5], [0.6, 0.4], [0.3, 0.7]])
    ours = Result(scores, np.array([1000, 2000, 3000, 4000, 5000]))
    valid = np.array([True, True, True, True, False])  # the last input was not finite
    mask = np.array([True, False, True, True, False])
    theirs = Result(np.array([[0.8, 0.2], [0.5, 0.5], [0.1, 0.9]]), np.array([500, 600, 700]))
    compared, alone = observations(ours, valid, Shadowed(mask, theirs))
    assert compared.inputs == 2 and compared.errors == 0  # row 2: the candidate's error
    assert np.array_equal(compared.candidate_scores, scores[[0, 3]])
    assert np.array_equal(compared.incumbent_scores, theirs.scores[[0, 2]])
    assert compared.candidate_latency_ms == (1.0, 4.0)
    assert compared.incumbent_latency_ms == (0.5, 0.7)
    assert alone.inputs == 1 and alone.errors == 1 and alone.incumbent_scores is None
    assert observations(ours, valid, None)[0].inputs == 3


BASE = '[device]\nid = "d1"\nsite = "s1"\n[mqtt]\nurl = "mqtt://b"\n[state]\ndir = "s"\n'
BASE += '[model]\npath = "m.tflite"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + text)
    return path


def test_update_config(tmp_path):
    assert load(write(tmp_path, "")).update is None
    (tmp_path / "root.json").write_text("{}")
    config = load(write(tmp_path, '[update]\ntrusted_root = "root.json"\n'))
    assert config.update.trusted_root == tmp_path / "root.json"
    assert config.update.probation.shadow_every == 4
    text = '[update]\ntrusted_root = "root.json"\n[update.probation]\nwindow_s = 5\n'
    assert load(write(tmp_path, text)).update.probation.window_s == 5.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[update]\n", "key update.trusted_root: is required"),
        ('[update]\ntrusted_root = "none.json"\n', "key update.trusted_root: no such file"),
        ('[update]\ntrusted_root = "bad.json"\n', "key update.trusted_root: "),
        (
            '[update]\ntrusted_root = "root.json"\n[update.probation]\nmin_agreement = 2\n',
            "key update.probation.min_agreement: must be <= 1.0",
        ),
        (
            '[update]\ntrusted_root = "root.json"\n[update.probation]\nwindow = 2\n',
            "key update.probation.window: unknown key",
        ),
    ],
)
def test_bad_update_config_is_one_line_naming_the_key(tmp_path, text, message):
    (tmp_path / "root.json").write_text("{}")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError) as error:
        load(write(tmp_path, text))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_daemon_does_not_import_tuf():
    code = "import sys, agent.daemon; print(sorted(m for m in sys.modules if 'tuf' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
