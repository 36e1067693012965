"""Deltas signed by the gateway's online key, served over real HTTP with Range requests, and
checked on the device against the offline-signed model."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from tuf.api.metadata import Metadata

from agent.trust import TrustedRepository, TrustError
from edgefleet.models import model_path
from gateway.releases import keystore
from gateway.releases.model_inspect import ReleaseOptions, build_model_meta
from gateway.serving.deltas import DeltaService
from gateway.serving.server import RepositoryServer
from protocol.delta import apply_delta, make_delta
from tests.gateway.release_support import sign


@pytest.fixture
def repo2(repo):
    sign(repo, "kws_f32_v2_head", "kws", 2)
    return repo


def device(tmp_path, repo, url):
    return TrustedRepository(tmp_path / "tuf", url, repo.metadata_dir / "1.root.json")


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


async def test_a_device_rebuilds_the_new_model_from_a_signed_delta(tmp_path, repo2):
    offer = DeltaService(repo2).offer("kws", 2, from_version=1)
    assert offer.kind == "delta" and offer.length < 10_000
    async with RepositoryServer(repo2.dir) as server:
        client = await in_thread(device, tmp_path, repo2, server.url)
        await in_thread(client.download, offer.fetch, tmp_path / "d.efdl")
        new = apply_delta(model_path("kws_f32_v1").read_bytes(), (tmp_path / "d.efdl").read_bytes())
        verified = await in_thread(client.check, "kws/2.tflite", new)
    assert verified.model_meta().version == 2
    assert new == model_path("kws_f32_v2_head").read_bytes()


def test_a_delta_is_built_once(repo2):
    service = DeltaService(repo2)
    first = service.offer("kws", 2, from_version=1)
    version = repo2.deltas.signed.version
    assert service.offer("kws", 2, from_version=1) == first
    assert DeltaService(repo2).offer("kws", 2, from_version=1) == first
    assert repo2.deltas.signed.version == version


def test_unknown_source_gets_the_full_model(repo2):
    offer = DeltaService(repo2).offer("kws", 2, from_version=None)
    assert (offer.kind, offer.fetch) == ("full", "kws/2.tflite")


async def test_range_requests_resume_a_download(repo2):
    release = repo2.releases()[0]
    url_path = f"/targets/kws/{release.sha256}.1.tflite"
    whole = model_path("kws_f32_v1").read_bytes()
    async with RepositoryServer(repo2.dir) as server, aiohttp.ClientSession() as session:
        async with session.get(server.url + url_path, headers={"Range": "bytes=1000-"}) as resp:
            assert resp.status == 206
            assert await resp.read() == whole[1000:]
        async with session.get(server.url + "/keys/offline/root.key") as resp:
            assert resp.status == 404


async def test_a_gateway_delta_for_a_model_nobody_signed_is_refused(tmp_path, repo2):
    """A taken-over gateway holds the deltas key: it can sign transport bytes, never a model."""
    evil = bytearray(model_path("kws_f32_v2_head").read_bytes())
    evil[-100] ^= 0xFF
    delta = make_delta(model_path("kws_f32_v1").read_bytes(), bytes(evil))
    repo2.add_delta("kws/deltas/1-2.efdl", delta, {"to": "kws/2.tflite"})
    async with RepositoryServer(repo2.dir) as server:
        client = await in_thread(device, tmp_path, repo2, server.url)
        await in_thread(client.download, "kws/deltas/1-2.efdl", tmp_path / "d.efdl")
        rebuilt = apply_delta(
            model_path("kws_f32_v1").read_bytes(), (tmp_path / "d.efdl").read_bytes()
        )
        with pytest.raises(TrustError) as refused:
            await in_thread(client.check, "kws/2.tflite", rebuilt)
    assert refused.value.reason == "hash-mismatch"


async def test_the_deltas_key_cannot_sign_a_model_target(tmp_path, repo2):
    """A model path signed into the deltas role is outside its paths: the device never sees it."""
    deltas_key = keystore.load(repo2.keys.path("deltas"))
    md = Metadata.from_file(str(repo2.metadata_dir / f"{repo2.deltas.signed.version}.deltas.json"))
    assert deltas_key.public_key.keyid in repo2.targets.signed.delegations.roles["deltas"].keyids
    evil = model_path("kws_int8_v1").read_bytes()
    from tuf.api.metadata import TargetFile

    md.signed.targets["kws/3.tflite"] = TargetFile.from_data("kws/3.tflite", evil, ["sha256"])
    repo2.deltas = md
    repo2.add_delta("kws/deltas/2-3.efdl", b"x", {})  # re-signs deltas.json with the entry
    async with RepositoryServer(repo2.dir) as server:
        client = await in_thread(device, tmp_path, repo2, server.url)
        with pytest.raises(TrustError) as refused:
            await in_thread(client.target, "kws/3.tflite")
    assert refused.value.reason == "unknown-target"


def test_deltas_of_pruned_versions_leave_the_deltas_role(repo2):
    """The deltas role stops growing with the releases: once v1 is pruned from the targets
    metadata, the next delta signed drops the ones from v1; a device on v1 gets full models."""
    service = DeltaService(repo2)
    assert service.offer("kws", 2, from_version=1).kind == "delta"
    inspected = build_model_meta(
        model_path("kws_f32_v2_full").read_bytes(), "kws", 3, ReleaseOptions(samples=8)
    )
    repo2.add_release(
        inspected.meta, model_path("kws_f32_v2_full").read_bytes(), inspected.gate, keep_versions=2
    )
    assert [r.version for r in repo2.releases()] == [2, 3]
    assert "kws/deltas/1-2.efdl" in repo2.deltas.signed.targets
    assert service.offer("kws", 3, from_version=2).kind == "delta"
    assert sorted(repo2.deltas.signed.targets) == ["kws/deltas/2-3.efdl"]
    assert DeltaService(repo2).offer("kws", 3, from_version=1).kind == "full"
