from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.models import model_path
from gateway.model_inspect import ReleaseOptions, build_model_meta, read_model
from gateway.repository import Repository


def sign(repo: Repository, model: str, name: str, version: int):
    data = read_model(model_path(model))
    inspected = build_model_meta(data, name, version, ReleaseOptions(samples=8, gate_samples=4))
    return repo.add_release(inspected.meta, data, inspected.gate_bytes)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A repository with kws version 1 (float32) signed."""
    repo = Repository.init(tmp_path / "repo")
    sign(repo, "kws_f32_v1", "kws", 1)
    return repo
