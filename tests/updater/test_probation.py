"""Probation at the manager level, fed with real outputs of real models on the same inputs, and
its verdict as a pure function; the boot counter; an unreadable saved state."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from agent.updater.device import UpdaterDevice
from agent.updater.manager import UpdateConfig, UpdateManager
from agent.updater.probation import Counts, Observation, Outcome, ProbationLimits, judge, record
from agent.updater.states import State
from edgefleet.engine import Engine
from edgefleet.models import bands
from firmware_sim.fleet.releases import one_class
from tests.updater.conftest import open_world
from tests.updater.support import FAST, assert_consistent, model, release, sha

LIMITS = ProbationLimits(min_samples=100, window_s=60.0, shadow_every=2)


@pytest.fixture(scope="module")
def trial_world(tmp_path_factory):
    """v3 predicts one class for every input; it passes the gate (its reference outputs are
    its own), and only the comparison with the incumbent can catch it."""
    with open_world(
        tmp_path_factory.mktemp("probation"),
        lambda repo: release(repo, one_class(model("kws_f32_v1")), 3),
    ) as opened:
        yield opened


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def run_trial(manager: UpdateManager, clock: Clock, inputs: np.ndarray):
    """What the daemon does in a trial: run the candidate on every input, the incumbent on the
    inputs ``should_shadow`` picks, and report both until the manager decides."""
    candidate_path, incumbent_path = manager.trial_models()
    candidate, incumbent = Engine(candidate_path), Engine(incumbent_path)
    try:
        for sample in inputs:
            clock.now += 1.0
            ours = candidate.infer(sample[None])
            shadow = incumbent.infer(sample[None]) if manager.should_shadow() else None
            verdict = await manager.observe(
                Observation(
                    ours.scores,
                    tuple(ours.latency_us / 1000),
                    shadow.scores if shadow else None,
                    tuple(shadow.latency_us / 1000) if shadow else (),
                )
            )
            if verdict.decision != Outcome.CONTINUE:
                return verdict
    finally:
        candidate.close()
        incumbent.close()
    raise AssertionError("no verdict")


def live_inputs(count: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((count, 49, 10)).astype(np.float32)


@pytest.mark.parametrize(
    ("version", "end", "active"),
    [(3, State.ROLLED_BACK, "kws_f32_v1"), (2, State.COMMITTED, "kws_f32_v2_head")],
    ids=["one-class model rolled back", "fine-tune committed"],
)
async def test_probation_judges_the_candidate_against_the_incumbent(
    trial_world, tmp_path, version, end, active
):
    state_dir, clock, seen = trial_world.device(tmp_path), Clock(), []
    config = UpdateConfig(state_dir, trial_world.root, probation=LIMITS)
    async with UpdateManager(config, seen.append, clock) as manager:
        state = await manager.offer(trial_world.url, f"kws/{version}.tflite")
        assert state == State.TRIAL
        verdict = await run_trial(manager, clock, live_inputs(400))
        assert manager.state == end
        assert manager.active_model()[1]["sha256"] == sha(model(active))
    kinds = [t.kind for t in seen if t.kind]
    assert kinds[:4] == ["update_offered", "update_downloaded", "update_installed", "update_trial"]
    if end == State.ROLLED_BACK:
        assert verdict.measures["agreement"] < 0.2 and verdict.measures["psi"] > 1.0
        assert kinds[-1] == "update_rolled_back"
        assert seen[-1].detail["reason"].startswith("probation: agrees with the incumbent on")
    else:
        assert verdict.decision == Outcome.COMMIT and kinds[-1] == "update_committed"
    assert assert_consistent(state_dir, {trial_world.v1, trial_world.v2})[0] == sha(model(active))


async def test_too_many_restarts_in_trial_roll_back(trial_world, tmp_path):
    state_dir, seen = trial_world.device(tmp_path), []
    config = UpdateConfig(state_dir, trial_world.root, probation=LIMITS)
    async with UpdateManager(config, seen.append) as manager:
        assert await manager.offer(trial_world.url, "kws/2.tflite") == State.TRIAL
    for boot in range(1, LIMITS.max_trial_boots + 2):
        async with UpdateManager(config, seen.append) as manager:
            if boot <= LIMITS.max_trial_boots:
                assert (manager.state, manager.saved.boots) == (State.TRIAL, boot)
    assert manager.state == State.ROLLED_BACK and seen[-1].kind == "update_rolled_back"
    assert assert_consistent(state_dir, {trial_world.v1})[0] == trial_world.v1


async def test_an_unreadable_saved_state_rolls_back(trial_world, tmp_path):
    state_dir = trial_world.device(tmp_path)
    config = UpdateConfig(state_dir, trial_world.root, probation=LIMITS)
    async with UpdateManager(config) as manager:
        assert await manager.offer(trial_world.url, "kws/2.tflite") == State.TRIAL
    saved = json.loads((state_dir / "state.json").read_text())
    (state_dir / "state.json").write_text(json.dumps(saved | {"format": 99}))
    async with UpdateManager(config) as manager:
        assert manager.state == State.ROLLED_BACK
    assert assert_consistent(state_dir, {trial_world.v1})[0] == trial_world.v1
    assert (
        UpdaterDevice(state_dir).store.load().reason.startswith("saved state has an unknown format")
    )


def counts(agreed: int, shadowed: int = 200, errors: int = 0, latency: float = 0.1) -> Counts:
    result = Counts(classes=4, started_s=0.0)
    ours = np.eye(4)[[0] * agreed + [1] * (shadowed - agreed)]
    theirs = np.eye(4)[[0] * shadowed]
    record(
        result,
        LIMITS,
        Observation(ours, (latency,) * shadowed, theirs, (0.1,) * shadowed, errors=errors),
    )
    return result


@pytest.mark.parametrize(
    ("seen", "now", "decision", "words"),
    [
        (counts(50, shadowed=50), 1000.0, Outcome.CONTINUE, ""),
        (counts(200), 10.0, Outcome.CONTINUE, ""),
        (counts(200), 60.0, Outcome.COMMIT, ""),
        (counts(150), 10.0, Outcome.ROLLBACK, "agrees with the incumbent on 75.0%"),
        (counts(200, errors=20), 10.0, Outcome.ROLLBACK, "error rate 9.1%"),
        (counts(200, latency=5000.0), 10.0, Outcome.ROLLBACK, "latency p95 5000.00 ms"),
        (counts(200, latency=5.0), 10.0, Outcome.ROLLBACK, "against the incumbent's"),
    ],
)
def test_the_probation_verdict(seen, now, decision, words):
    verdict = judge(seen, LIMITS, now)
    assert verdict.decision == decision and words in verdict.summary


@pytest.fixture(scope="module")
def retrained_world(tmp_path_factory):
    """v3 and v4 are the model retrained on dimmed inputs: v3 signed as it is, v4 with the
    agreement and top-class PSI with its predecessor that probation should expect of it."""

    def sign(repo) -> None:
        release(repo, model("kws_f32_v3_drift"), 3)
        release(
            repo,
            model("kws_f32_v3_drift"),
            4,
            replace(FAST, probation_min_agreement=0.2, probation_max_psi=10.0),
        )

    with open_world(tmp_path_factory.mktemp("retrained"), sign) as opened:
        yield opened


@pytest.mark.parametrize(
    ("version", "end"),
    [(3, State.ROLLED_BACK), (4, State.COMMITTED)],
    ids=["device agreement", "signed agreement"],
)
async def test_a_release_may_state_the_agreement_probation_expects(
    retrained_world, tmp_path, version, end
):
    """On dimmed inputs the retrained model disagrees with v1 wherever v1 errs: the device's
    own limits (90 % agreement, PSI 0.25) roll it back, unless its signed metadata says what to
    expect."""
    state_dir, clock = retrained_world.device(tmp_path), Clock()
    limits = ProbationLimits(min_samples=100, window_s=60.0, shadow_every=1)
    config = UpdateConfig(state_dir, retrained_world.root, probation=limits)
    inputs, _ = bands.make(np.random.default_rng(3), 300, shift=-1.5)
    async with UpdateManager(config, lambda t: None, clock) as manager:
        assert await manager.offer(retrained_world.url, f"kws/{version}.tflite") == State.TRIAL
        verdict = await run_trial(manager, clock, inputs)
        assert manager.state == end, verdict.summary
    assert verdict.measures["agreement"] < 0.9
