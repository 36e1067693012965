"""The device's verification entry point against a real repository over real HTTP: every attack
TUF is meant to stop is refused, each for its own reason."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from tuf.api.metadata import Metadata

from agent.trust import TrustedRepository, TrustError, verify_target
from gateway.releases import keystore
from tests.gateway.release_support import sign
from tests.support.http_repo import RepositoryServer


@pytest.fixture
def served(repo):
    with RepositoryServer(repo.dir) as server:
        yield server


def client(tmp_path, repo, server, name="client"):
    return TrustedRepository(tmp_path / name, server.url, repo.metadata_dir / "1.root.json")


def meta_path(version, role):
    return f"/metadata/{version}.{role}.json"


def test_verified_target_carries_the_signed_ml_metadata(tmp_path, repo, served):
    target = client(tmp_path, repo, served).download("kws/1.tflite", tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").read_bytes() == (
        repo.targets_dir / "kws" / f"{target.sha256}.1.tflite"
    ).read_bytes()
    meta = target.model_meta()
    assert (meta.name, meta.version) == ("kws", 1)
    assert meta.inputs[0].shape == (1, 49, 10)


def test_a_local_copy_works_like_the_server(tmp_path, repo):
    target = verify_target(
        tmp_path / "c", str(repo.dir), "kws/1.tflite", repo.metadata_dir / "root.json"
    )
    assert target.length == repo.releases()[0].length


def test_tampered_targets_metadata_is_refused(tmp_path, repo, served):
    version = repo.targets.signed.version
    doc = json.loads((repo.metadata_dir / f"{version}.targets.json").read_text())
    doc["signed"]["targets"]["kws/1.tflite"]["length"] += 1
    served.overrides[meta_path(version, "targets")] = json.dumps(doc).encode()
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served).target("kws/1.tflite")
    assert refused.value.reason == "bad-signature"


def test_tampered_model_bytes_are_refused(tmp_path, repo, served):
    release = repo.releases()[0]
    url = f"/targets/kws/{release.sha256}.1.tflite"
    good = (repo.targets_dir / "kws" / f"{release.sha256}.1.tflite").read_bytes()
    served.overrides[url] = good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:]
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served).download("kws/1.tflite", tmp_path / "m.tflite")
    assert refused.value.reason == "hash-mismatch"
    assert not (tmp_path / "m.tflite").exists()


def test_endless_data_is_cut_at_the_signed_length(tmp_path, repo, served):
    release = repo.releases()[0]
    served.extra[f"/targets/kws/{release.sha256}.1.tflite"] = b"\0" * 100_000
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served).download("kws/1.tflite", tmp_path / "m.tflite")
    assert refused.value.reason == "too-long"


def test_replayed_older_timestamp_is_refused(tmp_path, repo, served):
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    sign(repo, "kws_f32_v2_head", "kws", 2)
    client(tmp_path, repo, served).target("kws/2.tflite")  # the device has seen release 2
    served.overrides["/metadata/timestamp.json"] = old_timestamp
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served)
    assert refused.value.reason == "rollback"


def test_replayed_older_snapshot_is_refused(tmp_path, repo, served):
    old_version = repo.snapshot.signed.version
    old_snapshot = (repo.metadata_dir / f"{old_version}.snapshot.json").read_bytes()
    sign(repo, "kws_f32_v2_head", "kws", 2)
    served.overrides[meta_path(repo.snapshot.signed.version, "snapshot")] = old_snapshot
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served)
    assert refused.value.reason == "rollback"


def test_mix_and_match_of_two_releases_is_refused(tmp_path, repo, served):
    old_targets = (repo.metadata_dir / f"{repo.targets.signed.version}.targets.json").read_bytes()
    sign(repo, "kws_f32_v2_head", "kws", 2)
    # timestamp and snapshot of release 2, with the targets of release 1 in place of its own
    served.overrides[meta_path(repo.targets.signed.version, "targets")] = old_targets
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served).target("kws/2.tflite")
    assert refused.value.reason == "rollback"


def test_expired_timestamp_is_refused_as_a_freeze(tmp_path, repo, served):
    repo.refresh_timestamp(lifetime=timedelta(seconds=-60))
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served)
    assert refused.value.reason == "expired"
    assert "clock" in str(refused.value)


@pytest.mark.parametrize("role", ["targets", "root", "timestamp", "snapshot"])
def test_key_rotation_is_accepted_by_an_old_client(tmp_path, repo, served, role):
    client(tmp_path, repo, served).target("kws/1.tflite")  # cache holds root version 1
    repo.rotate_key(role)
    sign(repo, "kws_f32_v2_head", "kws", 2)
    refreshed = client(tmp_path, repo, served)  # starts from its cached root v1
    assert refreshed.target("kws/2.tflite").model_meta().version == 2
    cached_root = Metadata.from_file(str(tmp_path / "client" / "root.json"))
    assert cached_root.signed.version == 2


def test_a_retired_targets_key_can_no_longer_sign(tmp_path, repo, served):
    old_key = keystore.load(repo.keys.path("targets"))
    repo.rotate_key("targets")
    sign(repo, "kws_f32_v2_head", "kws", 2)
    version = repo.targets.signed.version
    forged = Metadata.from_file(str(repo.metadata_dir / f"{version}.targets.json"))
    forged.signatures.clear()
    forged.sign(old_key)
    served.overrides[meta_path(version, "targets")] = forged.to_bytes()
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served)
    assert refused.value.reason == "bad-signature"


def test_new_root_signed_only_by_an_unknown_key_is_refused(tmp_path, repo, served):
    client(tmp_path, repo, served)
    rogue = keystore.generate()
    root = Metadata.from_file(str(repo.metadata_dir / "1.root.json"))
    root.signed.version = 2
    old_keyid = root.signed.roles["root"].keyids[0]
    root.signed.revoke_key(old_keyid, "root")
    root.signed.add_key(rogue.public_key, "root")
    root.signatures.clear()
    root.sign(rogue)
    served.overrides[meta_path(2, "root")] = root.to_bytes()
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served)
    assert refused.value.reason == "bad-signature"


def test_unsigned_trusted_root_is_refused_at_provisioning(tmp_path, repo, served):
    root = json.loads((repo.metadata_dir / "1.root.json").read_text())
    root["signatures"] = []
    bad_root = tmp_path / "unsigned-root.json"
    bad_root.write_text(json.dumps(root))
    with pytest.raises(TrustError) as refused:
        TrustedRepository(tmp_path / "fresh", served.url, bad_root)
    assert refused.value.reason == "bad-signature"


def test_a_target_nobody_signed_is_unknown(tmp_path, repo, served):
    with pytest.raises(TrustError) as refused:
        client(tmp_path, repo, served).target("kws/9.tflite")
    assert refused.value.reason == "unknown-target"


def test_an_unprovisioned_device_refuses_to_start(tmp_path, repo, served):
    with pytest.raises(TrustError) as refused:
        TrustedRepository(tmp_path / "empty", served.url)
    assert refused.value.reason == "not-provisioned"
