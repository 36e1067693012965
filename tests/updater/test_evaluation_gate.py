"""The accuracy floor on the device: the update worker, a real process, fetches the signed
evaluation set over real HTTP through the same verified path as the model, runs the candidate
on it and refuses it below the floor. A set the targets metadata does not list, or lists as
other bytes, is a refusal about the release; bytes tampered on the way wait for the right
ones, as a tampered model does. Releases without an evaluation set update as before."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tuf.api.metadata import TargetFile

from agent.updater.cycle import Cycle, CycleConfig
from agent.updater.device import UpdaterDevice
from agent.updater.errors import Transient
from agent.updater.gate import judge_gate
from agent.updater.states import BEFORE_SWITCH, State
from agent.updater.store import Offer
from gateway.releases import keystore
from gateway.releases.repository import Repository
from protocol.model_meta import EvalRef
from tests.support.http_repo import RepositoryServer as SubvertibleServer
from tests.updater.conftest import open_world
from tests.updater.support import (
    assert_consistent,
    final,
    model,
    release,
    sha,
    transitions,
    with_eval_set,
    worker,
)
from tests.updater.test_gate import EXPECTED, meta


def resign(repo: Repository, change) -> None:
    """Re-sign the targets metadata after ``change`` edits it, as a tool other than
    ``edgefleet release`` might have signed it."""
    change(repo.targets.signed.targets)
    signer = keystore.load(repo.keys.path("targets"))
    repo._publish(repo.targets, [signer], repo.online_signers())


def sign_releases(repo: Repository) -> None:
    base = repo.dir.parent
    # v3: signed below its minimum on purpose (bands dimmed by 1.5: ~60 % against 90 %)
    release(repo, model("kws_f32_v2_full"), 3, with_eval_set(base / "dim.npz", -1.5, 0.9, True))
    # v4: a release as signed before evaluation sets existed
    release(repo, model("kws_f32_v2_full"), 4)
    # v5: the metadata names a set the targets metadata does not list
    release(repo, model("kws_f32_v2_full"), 5, with_eval_set(base / "v5.npz", 0.0, 0.9))
    resign(repo, lambda targets: targets.pop("kws/5.eval.npz"))
    # v6: the targets metadata lists other bytes under the set's path
    release(repo, model("kws_f32_v2_full"), 6, with_eval_set(base / "v6.npz", 0.0, 0.9))
    other = TargetFile.from_data("kws/6.eval.npz", b"other bytes", ["sha256"])
    other.unrecognized_fields["custom"] = {"eval_for": "kws/6.tflite"}
    repo._store_target(other, b"other bytes")
    resign(repo, lambda targets: targets.__setitem__("kws/6.eval.npz", other))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with open_world(tmp_path_factory.mktemp("evaluation"), sign_releases) as opened:
        yield opened


def run(world, state_dir, version: int):
    offer = ("run", "--repository", world.url, "--target", f"kws/{version}.tflite")
    return worker(state_dir, world.root, *offer)


def test_the_signed_set_is_fetched_and_the_model_passes_its_floor(world, tmp_path):
    """v2 (head fine-tune) on in-distribution bands: fetched through the verified path, run
    on the device, and on trial."""
    signed = next(r for r in world.repo.releases() if r.version == 2).meta.evaluation
    assert signed is not None and signed.passed
    state_dir = world.device(tmp_path)
    with SubvertibleServer(world.repo.dir) as server:
        offer = ("run", "--repository", server.url, "--target", "kws/2.tflite")
        result = worker(state_dir, world.root, *offer)
        assert final(result)["state"] == State.TRIAL.value
        assert f"/targets/kws/{signed.sha256}.2.eval.npz" in server.requests
    assert assert_consistent(state_dir, {world.v1, world.v2})[0] == world.v2


def test_below_the_floor_the_gate_refuses_with_the_accuracy(world, tmp_path):
    state_dir = world.device(tmp_path)
    result = run(world, state_dir, 3)
    saved = final(result)
    assert transitions(result) == ["OFFERED", "DOWNLOADING", "VERIFIED", "INSTALLED", "REFUSED"]
    reason = saved["reason"]
    assert reason.startswith("health gate: accuracy 0."), reason
    assert "on the signed evaluation set (n=200) is below the floor 0.9" in reason
    assert assert_consistent(state_dir, {world.v1})[0] == world.v1


def test_a_release_without_an_evaluation_set_updates_as_before(world, tmp_path):
    assert next(r for r in world.repo.releases() if r.version == 4).meta.evaluation is None
    state_dir = world.device(tmp_path)
    assert final(run(world, state_dir, 4))["state"] == State.TRIAL.value
    assert assert_consistent(state_dir, {world.v1, sha(model("kws_f32_v2_full"))})


@pytest.mark.parametrize(
    ("version", "words"),
    [
        (5, "evaluation set kws/5.eval.npz is not a signed target"),
        (6, "evaluation set is not the one the model metadata names"),
    ],
)
def test_a_set_the_release_does_not_sign_is_refused(world, tmp_path, version, words):
    state_dir = world.device(tmp_path)
    result = run(world, state_dir, version)
    assert transitions(result) == ["OFFERED", "DOWNLOADING", "REFUSED"]
    assert final(result)["reason"] == words
    assert assert_consistent(state_dir, {world.v1})[0] == world.v1


def test_a_set_tampered_on_the_way_waits_for_the_right_bytes(world, tmp_path):
    """Like a model tampered in transit: a hash mismatch is about the way, so the update stays
    where it was, on the old model, and goes on once the signed bytes come."""
    signed = next(r for r in world.repo.releases() if r.version == 2).meta.evaluation
    url_path = f"/targets/kws/{signed.sha256}.2.eval.npz"
    genuine = (world.repo.targets_dir / url_path.removeprefix("/targets/")).read_bytes()
    tampered = bytearray(genuine)
    tampered[len(tampered) // 2] ^= 0xFF
    state_dir = world.device(tmp_path)
    with SubvertibleServer(world.repo.dir) as server:
        server.overrides[url_path] = bytes(tampered)
        cycle = Cycle(UpdaterDevice(state_dir), CycleConfig(world.root))
        with pytest.raises(Transient, match="hash-mismatch"):
            cycle.start(Offer(server.url, "kws/2.tflite"))
        assert UpdaterDevice(state_dir).store.load().state in BEFORE_SWITCH
        assert assert_consistent(state_dir, {world.v1})[0] == world.v1
        del server.overrides[url_path]
        saved = Cycle(UpdaterDevice(state_dir), CycleConfig(world.root)).start(None)
    assert saved.state == State.TRIAL
    assert assert_consistent(state_dir, {world.v1, world.v2})[0] == world.v2


# -- the verdict, pure ---------------------------------------------------------------------


def floor(minimum: float, count: int = 50) -> EvalRef:
    return EvalRef("m/1.eval.npz", "0" * 64, 10, count, minimum, 1.0, True)


@pytest.mark.parametrize(
    ("accuracy", "passed", "words"),
    [
        (0.95, True, ""),
        (0.9, True, ""),
        (0.89, False, "accuracy 0.890 on the signed evaluation set (n=50) is below the floor 0.9"),
        (None, False, "accuracy not measured on the signed evaluation set"),
    ],
)
def test_the_verdict_holds_the_accuracy_floor(accuracy, passed, words):
    signed = dataclasses.replace(meta(), evaluation=floor(0.9))
    verdict = judge_gate(signed, [], EXPECTED, EXPECTED, [1.0], accuracy)
    assert verdict.passed is passed and words in verdict.summary


def test_without_an_evaluation_set_no_accuracy_is_needed():
    assert judge_gate(meta(), [], EXPECTED, EXPECTED, [1.0]).passed


def test_the_floor_stands_next_to_the_latency_budget():
    signed = dataclasses.replace(meta(budget_ms=1.0), evaluation=floor(0.9))
    verdict = judge_gate(signed, [], EXPECTED, EXPECTED, np.array([5.0]), 0.5)
    assert not verdict.passed and len(verdict.reasons) == 2
