"""A signed repository served over real HTTP for the whole session, and a device template that
runs kws version 1 (installed through the update path itself), copied for each test."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.updater.cycle import Cycle, CycleConfig
from agent.updater.device import UpdaterDevice
from agent.updater.states import State
from agent.updater.store import Offer
from gateway.releases.model_inspect import ReleaseOptions
from gateway.releases.repository import Repository
from tests.updater.support import model, release, served, sha, with_eval_set

TOO_SLOW = ReleaseOptions(samples=8, gate_samples=4, latency_budget_ms=0.0001)


@dataclass(frozen=True)
class World:
    repo: Repository
    url: str
    root: Path
    template: Path  # a device state folder on kws v1, committed
    v1: str  # sha256 of each signed model
    v2: str

    def device(self, tmp_path: Path) -> Path:
        state_dir = tmp_path / "device"
        shutil.copytree(self.template, state_dir, symlinks=True)
        return state_dir

    def offer(self, target: str) -> Offer:
        return Offer(self.url, target)


def provision(state_dir: Path, url: str, root: Path, target: str = "kws/1.tflite") -> None:
    saved = Cycle(UpdaterDevice(state_dir), CycleConfig(root)).start(Offer(url, target))
    assert saved.state == State.COMMITTED, saved


@contextmanager
def open_world(base: Path, sign: Callable[[Repository], None] = lambda repo: None):
    """A repository with kws v1 and v2 (head fine-tune, with a labelled evaluation set it
    passes) signed, then whatever ``sign`` adds, served over HTTP, and a device template
    provisioned with v1 (a release without an evaluation set)."""
    repo = Repository.init(base / "repo")
    release(repo, model("kws_f32_v1"), 1)
    # a small set: its target, like every other, stays under the model's size that
    # test_hostile_deltas gives as max_model_bytes
    evaluation = with_eval_set(base / "eval.npz", 0.0, 0.9, count=32)
    release(repo, model("kws_f32_v2_head"), 2, evaluation)
    sign(repo)
    root = repo.metadata_dir / "1.root.json"
    with served(repo.dir) as url:
        provision(base / "template", url, root)
        yield World(
            repo,
            url,
            root,
            base / "template",
            sha(model("kws_f32_v1")),
            sha(model("kws_f32_v2_head")),
        )


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """v1, v2, and v3 signed with a latency budget it cannot meet."""
    with open_world(
        tmp_path_factory.mktemp("updater"),
        lambda repo: release(repo, model("kws_f32_v2_full"), 3, TOO_SLOW),
    ) as opened:
        yield opened
