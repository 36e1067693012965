"""The update path end to end over real HTTP: deltas, resumed downloads, and the attacks the
device must refuse (downgrade, tampered delta, a gateway-signed delta that rebuilds a model the
targets key never signed, a corrupt delta, a tampered model)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import bsdiff4
import pytest

from agent.trust import TrustedRepository
from agent.updater.cycle import Cycle, CycleConfig, downgrade_refusal
from agent.updater.device import UpdaterDevice
from agent.updater.download import DownloadError, DownloadLimits, fetch, target_url
from agent.updater.errors import Transient
from agent.updater.manager import UpdateConfig, UpdateManager
from agent.updater.slots import SlotRecord
from agent.updater.states import BEFORE_SWITCH, State
from agent.updater.store import Offer
from gateway.releases.model_inspect import build_model_meta
from gateway.serving.deltas import DeltaService
from protocol.delta import Algorithm, make_delta
from tests.support.hostile_deltas import container
from tests.support.http_repo import RepositoryServer as SubvertibleServer
from tests.updater.conftest import open_world
from tests.updater.support import FAST, assert_consistent, final, model, worker

DELTA = "kws/deltas/1-2.efdl"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def update(state_dir, url, root, target):
    return Cycle(UpdaterDevice(state_dir), CycleConfig(root)).start(Offer(url, target))


def update_traced(state_dir, url, root, target) -> tuple:
    """``update``, and the reason each state was entered with."""
    reasons = {}
    device = UpdaterDevice(
        state_dir, lambda saved, event: reasons.setdefault(saved.state, saved.reason)
    )
    return Cycle(device, CycleConfig(root)).start(Offer(url, target)), reasons


def assert_fell_back(fresh, state_dir, saved, reasons, why: str) -> None:
    """A bad delta cost a full download, not the update: the signed model is on trial."""
    assert (saved.fetch, saved.state) == (DELTA, State.TRIAL)
    assert reasons[State.VERIFIED].startswith(f"delta refused ({why}")
    assert reasons[State.VERIFIED].endswith("); fetched the full model")
    assert assert_consistent(state_dir, {fresh.v1, fresh.v2})[0] == fresh.v2


@pytest.fixture
def fresh(tmp_path):
    """A world of its own, for tests that sign deltas into the repository."""
    with open_world(tmp_path / "world") as opened:
        yield opened


def test_a_delta_rebuilds_the_signed_model(fresh, tmp_path):
    offer = DeltaService(fresh.repo).offer("kws", 2, from_version=1)
    assert (offer.kind, offer.fetch) == ("delta", DELTA)
    state_dir = fresh.device(tmp_path)
    saved = update(state_dir, fresh.url, fresh.root, "kws/2.tflite")
    assert (saved.state, saved.fetch) == (State.TRIAL, DELTA)
    assert assert_consistent(state_dir, {fresh.v1, fresh.v2})[0] == fresh.v2


def test_a_download_resumes_where_it_stopped(world, tmp_path):
    release = next(r for r in world.repo.releases() if r.version == 2)
    url = target_url(world.url, release.path, release.sha256)
    partial = tmp_path / "model.partial"
    partial.write_bytes(model("kws_f32_v2_head")[:40_000])
    assert fetch(url, partial, release.length, DownloadLimits()) == 40_000
    assert partial.read_bytes() == model("kws_f32_v2_head")


def test_a_resumed_download_with_bad_bytes_starts_over(world, tmp_path):
    state_dir = world.device(tmp_path)
    run = ("run", "--repository", world.url, "--target", "kws/2.tflite")
    assert worker(state_dir, world.root, *run, hook="download.partial").returncode == -9
    (partial,) = (state_dir / "work").glob("*.partial")
    partial.write_bytes(bytes(partial.stat().st_size))  # what a power cut can leave behind
    assert final(worker(state_dir, world.root, *run))["state"] == "TRIAL"
    assert assert_consistent(state_dir, {world.v1, world.v2})[0] == world.v2


def test_a_server_sending_more_than_signed_is_cut_off(world, tmp_path):
    release = next(r for r in world.repo.releases() if r.version == 2)
    with SubvertibleServer(world.repo.dir) as server:
        url_path = f"/targets/kws/{release.sha256}.2.tflite"
        server.extra[url_path] = bytes(10_000_000)
        with pytest.raises(DownloadError) as refused:
            fetch(server.url + url_path, tmp_path / "p", release.length, DownloadLimits())
    assert refused.value.reason == "too-long"
    assert not (tmp_path / "p").exists()


def test_a_downgrade_is_refused(world, tmp_path):
    state_dir = world.device(tmp_path)
    assert update(state_dir, world.url, world.root, "kws/2.tflite").state == State.TRIAL
    UpdaterDevice(state_dir).finish(UpdaterDevice(state_dir).store.load(), commit=True)
    saved = update(state_dir, world.url, world.root, "kws/1.tflite")
    assert saved.state == State.REFUSED and saved.reason.startswith("downgrade")
    assert assert_consistent(state_dir, {world.v2})[0] == world.v2


def test_only_a_signed_rollback_release_may_go_back():
    running = SlotRecord("a", "kws/2.tflite", "kws", 2, "0" * 64, 1)
    assert downgrade_refusal(running, {}, "kws", 3, {}) is None
    assert downgrade_refusal(running, {}, "vision", 1, {}) is None
    assert "not newer" in downgrade_refusal(running, {}, "kws", 1, {})
    assert "not newer" in downgrade_refusal(running, {}, "kws", 2, {"rollback": True})
    assert downgrade_refusal(running, {}, "kws", 1, {"rollback": True}) is None
    # What the device once committed holds when it runs another name.
    assert "older than vision 4" in downgrade_refusal(running, {"vision": 4}, "vision", 3, {})
    assert downgrade_refusal(running, {"vision": 4}, "vision", 4, {}) is None
    assert downgrade_refusal(running, {"vision": 4}, "vision", 3, {"rollback": True}) is None


def test_a_tampered_delta_falls_back_to_the_full_model(fresh, tmp_path):
    DeltaService(fresh.repo).offer("kws", 2, from_version=1)
    signed = fresh.repo.deltas.signed.targets[DELTA]
    url_path = f"/targets/kws/deltas/{signed.hashes['sha256']}.1-2.efdl"
    tampered = bytearray((fresh.repo.targets_dir / url_path.removeprefix("/targets/")).read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    state_dir = fresh.device(tmp_path)
    with SubvertibleServer(fresh.repo.dir) as server:
        server.overrides[url_path] = bytes(tampered)
        saved, reasons = update_traced(state_dir, server.url, fresh.root, "kws/2.tflite")
    assert_fell_back(fresh, state_dir, saved, reasons, "hash-mismatch")


@pytest.mark.parametrize(
    "header, reason",
    [
        ("its own", "bad delta: delta declares another target than the signed model"),
        ("the signed", "bad delta: delta result does not match its target"),
    ],
)
def test_a_gateway_signed_delta_to_an_unsigned_model_is_refused(fresh, tmp_path, header, reason):
    """The gateway's online key signs deltas; only the offline targets key signs models. A
    delta naming its own target is refused before decoding; one that names the signed model
    but rebuilds another is refused on its result. Either way the device takes the signed
    model whole."""
    evil = bytearray(model("kws_f32_v2_head"))
    evil[-100] ^= 0xFF
    v1, v2 = model("kws_f32_v1"), model("kws_f32_v2_head")
    named = bytes(evil) if header == "its own" else v2
    payload = bsdiff4.diff(v1, bytes(evil))
    delta = container(Algorithm.BSDIFF4, sha256(v1), sha256(named), len(named), payload)
    fresh.repo.add_delta(DELTA, delta, {})
    state_dir = fresh.device(tmp_path)
    saved, reasons = update_traced(state_dir, fresh.url, fresh.root, "kws/2.tflite")
    assert_fell_back(fresh, state_dir, saved, reasons, reason)


def test_a_corrupt_delta_falls_back_to_the_full_model(fresh, tmp_path):
    delta = bytearray(make_delta(model("kws_f32_v1"), model("kws_f32_v2_head")))
    delta[len(delta) // 2] ^= 0xFF
    fresh.repo.add_delta(DELTA, bytes(delta), {})
    state_dir = fresh.device(tmp_path)
    saved, reasons = update_traced(state_dir, fresh.url, fresh.root, "kws/2.tflite")
    assert_fell_back(fresh, state_dir, saved, reasons, "bad delta")


def test_a_model_tampered_in_transit_waits_for_the_right_bytes(world, tmp_path):
    """A hash mismatch is about the way, not the model: the update stays where it was, on the
    old model, and goes on once the right bytes come."""
    release = next(r for r in world.repo.releases() if r.version == 2)
    url_path = f"/targets/kws/{release.sha256}.2.tflite"
    state_dir = world.device(tmp_path)
    with SubvertibleServer(world.repo.dir) as server:
        server.overrides[url_path] = model("kws_f32_v2_full")
        with pytest.raises(Transient, match="hash-mismatch"):
            update(state_dir, server.url, world.root, "kws/2.tflite")
        assert UpdaterDevice(state_dir).store.load().state in BEFORE_SWITCH
        assert assert_consistent(state_dir, {world.v1})[0] == world.v1
        del server.overrides[url_path]
        saved = Cycle(UpdaterDevice(state_dir), CycleConfig(world.root)).start(None)
    assert saved.state == State.TRIAL
    assert assert_consistent(state_dir, {world.v1, world.v2})[0] == world.v2


def test_an_update_from_a_local_copy_of_the_repository(world, tmp_path):
    """A USB stick or a copied folder: the same checks, without HTTP."""
    state_dir = world.device(tmp_path)
    saved = update(state_dir, str(world.repo.dir), world.root, "kws/2.tflite")
    assert saved.state == State.TRIAL
    assert assert_consistent(state_dir, {world.v1, world.v2})[0] == world.v2


def test_the_device_fetches_the_compact_gate_vectors(world, tmp_path):
    """Seeded inputs are made on the device: of the gate vectors it fetches only the compact
    file (the outputs), never the full one older agents read."""
    fetched = gate_files_fetched(world, tmp_path, "kws/2.tflite")
    assert len(fetched) == 1 and fetched[0].endswith(".2.gate2.json"), fetched


def gate_files_fetched(world, tmp_path, target: str) -> list[str]:
    """The gate vector files a device on v1 fetches while it updates to ``target``."""
    state_dir = world.device(tmp_path)
    with SubvertibleServer(world.repo.dir) as server:
        assert update(state_dir, server.url, world.root, target).state == State.TRIAL
    return [path for path in server.requests if ".gate" in path]


def test_a_release_naming_only_the_full_gate_vectors_still_updates(fresh, tmp_path):
    """Metadata signed before the compact encoding existed names one gate file: the device
    fetches and checks that one."""
    inspected = build_model_meta(model("kws_f32_v2_full"), "kws", 3, FAST)
    meta = replace(inspected.meta, gate=replace(inspected.meta.gate, compact=None))
    fresh.repo.add_release(meta, model("kws_f32_v2_full"), inspected.gate)
    fetched = gate_files_fetched(fresh, tmp_path, "kws/3.tflite")
    assert len(fetched) == 1 and fetched[0].endswith(".3.gate.json"), fetched


def test_another_offer_during_an_update_is_busy(world, tmp_path):
    state_dir = world.device(tmp_path)
    run = ("run", "--repository", world.url, "--target")
    killed = worker(state_dir, world.root, *run, "kws/2.tflite", hook="download.partial")
    assert killed.returncode == -9
    assert worker(state_dir, world.root, *run, "kws/3.tflite").returncode == 3
    assert final(worker(state_dir, world.root, *run, "kws/2.tflite"))["state"] == "TRIAL"


def test_what_was_signed_about_a_model_outlives_its_pruning(fresh, tmp_path):
    """Newer releases prune v2 from the targets metadata; the device still running it keeps
    the metadata verified at install (its drift reference, its signature) beside the slot."""
    state_dir = fresh.device(tmp_path)
    assert update(state_dir, fresh.url, fresh.root, "kws/2.tflite").state == State.TRIAL
    manager = UpdateManager(UpdateConfig(state_dir=state_dir, trusted_root=fresh.root))
    slot = manager.device.slots.pointer().active
    listed = manager.signed_meta(slot.target, slot.sha256)
    for version in (3, 4):
        inspected = build_model_meta(model("kws_f32_v2_full"), "kws", version, FAST)
        fresh.repo.add_release(
            inspected.meta, model("kws_f32_v2_full"), inspected.gate, keep_versions=1
        )
    assert [r.version for r in fresh.repo.releases()] == [4]
    trust = TrustedRepository(manager.device.layout.tuf, fresh.url, fresh.root)
    assert trust.target("kws/4.tflite")  # the device refreshed: v2 is no longer listed
    assert manager._signed_target(slot.target) is None
    assert listed is not None and manager.signed_meta(slot.target, slot.sha256) == listed
    assert manager.signed_meta(slot.target, "0" * 64) is None
