"""The gateway takes in what the operator signed offline, holding only the online keys."""

from __future__ import annotations

import pytest

from agent.trust import TrustedRepository
from gateway.releases.errors import ReleaseError
from gateway.releases.repository import Repository
from gateway.serving.deltas import DeltaService
from gateway.serving.release_import import gateway_keys, import_release
from tests.gateway.release_support import sign


@pytest.fixture
def served(tmp_path, repo):
    result = import_release(repo.dir, tmp_path / "served", repo.keys.online)
    assert result.created and result.new_targets == 3  # model, gate vectors in two encodings
    return tmp_path / "served"


def device(tmp_path, repo, served_dir):
    return TrustedRepository(tmp_path / "tuf", str(served_dir), repo.metadata_dir / "1.root.json")


def test_the_served_copy_has_no_keys(served):
    assert not (served / "keys").exists()


def test_new_releases_and_rotations_flow_through_and_deltas_survive(tmp_path, repo, served):
    sign(repo, "kws_f32_v2_head", "kws", 2)
    assert import_release(repo.dir, served, repo.keys.online).new_targets == 3
    gateway = Repository(served, gateway_keys(served, repo.keys.online))
    offer = DeltaService(gateway).offer("kws", 2, from_version=1)
    client = device(tmp_path, repo, served)
    assert client.target(offer.fetch).length == offer.length

    repo.rotate_key("targets")
    sign(repo, "kws_f32_v2_full", "kws", 3)
    result = import_release(repo.dir, served, repo.keys.online)
    assert result.new_targets == 3
    client = device(tmp_path, repo, served)
    assert client.target("kws/3.tflite").model_meta().version == 3
    assert client.target(offer.fetch).length == offer.length  # the gateway's delta is kept


def test_importing_the_same_release_twice_changes_nothing(repo, served):
    before = sorted(p.name for p in (served / "metadata").iterdir())
    assert import_release(repo.dir, served, repo.keys.online).new_targets == 0
    assert sorted(p.name for p in (served / "metadata").iterdir()) == before


def test_targets_signed_by_another_key_are_refused(tmp_path, repo, served):
    other = Repository.init(tmp_path / "other")
    sign(other, "kws_f32_v2_head", "kws", 1)
    sign(other, "kws_f32_v2_full", "kws", 2)
    sign(other, "kws_f32_v2_full", "kws", 3)
    with pytest.raises(ReleaseError, match="not signed by the targets key"):
        import_release(other.dir, served, repo.keys.online)


def test_older_targets_are_refused(tmp_path, repo, served):
    import shutil

    old_copy = tmp_path / "old"
    shutil.copytree(repo.dir, old_copy)
    sign(repo, "kws_f32_v2_head", "kws", 2)
    import_release(repo.dir, served, repo.keys.online)
    with pytest.raises(ReleaseError, match="older"):
        import_release(old_copy, served, repo.keys.online)


def test_wrong_online_keys_are_refused(tmp_path, repo):
    other = Repository.init(tmp_path / "other")
    with pytest.raises(ReleaseError, match=r"is not a (snapshot|timestamp) key"):
        import_release(repo.dir, tmp_path / "served2", other.keys.online)
    assert not (tmp_path / "served2").exists()


def test_targets_the_gateway_could_not_serve_are_refused(repo, served, monkeypatch):
    """A version past 32 bits, signed by a tool that did not check it, never reaches the
    gateway's repository (its rollouts would fail in SQLite)."""
    from gateway.releases import repository as module
    from protocol.model_meta import MetadataError

    monkeypatch.setattr(module.Repository, "check_new_version", lambda *args: None)
    with pytest.raises(MetadataError):  # the operator's own listing refuses it as well
        sign(repo, "kws_f32_v2_head", "kws", 2**31)
    before = sorted(p.name for p in (served / "metadata").iterdir())
    with pytest.raises(ReleaseError, match=r"kws/2147483648\.tflite: versions run from 1 to"):
        import_release(repo.dir, served, repo.keys.online)
    assert sorted(p.name for p in (served / "metadata").iterdir()) == before
