"""Signing a bundled model into a release repository, as the operator does."""

from __future__ import annotations

from edgefleet.models import model_path
from gateway.releases.model_inspect import ReleaseOptions, build_model_meta, read_model
from gateway.releases.repository import Repository


def sign(repo: Repository, model: str, name: str, version: int):
    data = read_model(model_path(model))
    inspected = build_model_meta(data, name, version, ReleaseOptions(samples=8, gate_samples=4))
    return repo.add_release(inspected.meta, data, inspected.gate)
