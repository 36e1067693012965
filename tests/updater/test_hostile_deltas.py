"""Deltas signed by a gateway that was taken over cannot exhaust a device: the real update
worker, as a process, against a real repository over HTTP in which the deltas key signed each
hostile delta. Each is refused with its reason before it inflates (the worker's peak resident
set stays far below what the delta declares or would inflate to, and an address-space limit
keeps a regression from taking the test machine down with it), and the device fetches the full
model instead: a delta is transport, and a bad one costs a download, not the update."""

from __future__ import annotations

import hashlib
import json
import resource
import sys

import pytest

from agent.updater.cycle import Cycle, CycleConfig
from agent.updater.device import UpdaterDevice
from agent.updater.states import State
from agent.updater.store import Offer
from protocol.delta import Algorithm, make_delta
from tests.support.hostile_deltas import (
    MiB,
    bsdiff4_payload,
    container,
    one_control_entry,
    zeros_bz2,
    zeros_zlib,
)
from tests.support.http_repo import RepositoryServer as RecordingServer
from tests.support.peak_rss import run_measured
from tests.updater.conftest import open_world
from tests.updater.support import REPO, assert_consistent, model

DELTA = "kws/deltas/1-2.efdl"
ADDRESS_SPACE = 2048 * MiB  # a guard: the bounded worker needs a small part of it
PEAK_LIMIT = 160 * MiB  # the worker refusing a delta (python-tuf loaded) stays near 60 MiB
BOMB = 512 * MiB


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One repository; each test signs its delta as kws 1 -> 2 with the deltas key."""
    with open_world(tmp_path_factory.mktemp("hostile")) as opened:
        yield opened


def measured_run(state_dir, root, url, *options: str) -> tuple[dict, int]:
    """The worker's final state for the offer of kws 2, and its peak resident set in bytes."""
    command = [sys.executable, "-m", "agent.updater.worker", "--state-dir", str(state_dir)]
    command += ["--root", str(root), *options, "run", "--repository", url]
    command += ["--target", "kws/2.tflite"]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    run = run_measured(command, cwd=REPO, preexec_fn=limit)
    assert run.returncode == 0, run.output[-3000:]
    lines = [json.loads(line) for line in run.output.splitlines() if line.startswith("{")]
    fetched = next(line for line in lines if line.get("state") == "VERIFIED")
    return lines[-1]["final"] | {"fetched_because": fetched["reason"]}, run.peak_bytes


def refused(world, tmp_path, delta: bytes) -> tuple[str, int]:
    """Why the delta was refused; the device went on with the full model, to its trial."""
    world.repo.add_delta(DELTA, delta, {})
    state_dir = world.device(tmp_path)
    final, peak = measured_run(state_dir, world.root, world.url)
    assert (final["state"], final["fetch"]) == ("TRIAL", DELTA)
    assert final["candidate"]["sha256"] == world.v2
    assert assert_consistent(state_dir, {world.v1, world.v2})[0] == world.v2
    wrapped = final["fetched_because"]
    assert wrapped.startswith("delta refused (") and wrapped.endswith("); fetched the full model")
    return wrapped.removeprefix("delta refused (").removesuffix("); fetched the full model"), peak


def signed_v2(world) -> tuple[bytes, bytes, int]:
    """What the device trusts: the model it holds, and the offline-signed kws 2."""
    v2 = model("kws_f32_v2_head")
    return bytes.fromhex(world.v1), hashlib.sha256(v2).digest(), len(v2)


def test_a_small_delta_declaring_a_huge_target_is_refused_before_it_inflates(hostile, tmp_path):
    """zlib declaring 512 MiB (a target the header says, not the signed one); smaller than the
    model, so the device takes it as its delta."""
    bomb = container(Algorithm.FULL_ZLIB, bytes(32), bytes(32), BOMB, zeros_zlib(16 * MiB))
    reason, peak = refused(hostile, tmp_path, bomb)
    _, _, length = signed_v2(hostile)
    assert reason == (
        f"bad delta: delta declares a target of {BOMB} bytes, the signed model has {length}"
    )
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.0f} MiB"


def test_a_bsdiff4_stream_inflating_beyond_the_target_is_refused(hostile, tmp_path):
    """The container names the signed model exactly; the patch inside carries a few hundred
    bytes of bz2 that would inflate to 512 MiB."""
    source, target, length = signed_v2(hostile)
    payload = bsdiff4_payload(length, one_control_entry(length, 0), zeros_bz2(BOMB), zeros_bz2(0))
    reason, peak = refused(
        hostile, tmp_path, container(Algorithm.BSDIFF4, source, target, length, payload)
    )
    assert reason == f"bad delta: bsdiff4 diff decompresses to more than {length} bytes"
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.0f} MiB"


def test_a_bsdiff4_patch_declaring_another_size_is_refused(hostile, tmp_path):
    source, target, length = signed_v2(hostile)
    payload = bsdiff4_payload(BOMB, one_control_entry(BOMB, 0), zeros_bz2(BOMB), zeros_bz2(0))
    reason, peak = refused(
        hostile, tmp_path, container(Algorithm.BSDIFF4, source, target, length, payload)
    )
    assert reason == f"bad delta: bsdiff4 payload declares {BOMB} bytes, the target has {length}"
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.0f} MiB"


def test_a_delta_to_another_target_is_refused_before_decoding(hostile, tmp_path):
    """A genuine delta, to a model the targets key signed as another version (kws 3)."""
    delta = make_delta(model("kws_f32_v1"), model("kws_f32_v2_full"), [Algorithm.BSDIFF4])
    reason, _ = refused(hostile, tmp_path, delta)
    assert (
        reason == "bad delta: delta declares another target than the signed model (target sha256)"
    )


def test_a_delta_from_another_source_is_refused_before_decoding(hostile, tmp_path):
    """Already refused before decoding by the source hash check; kept as it is now named by
    the header check against the slot's signed record."""
    delta = make_delta(model("kws_f32_v2_full"), model("kws_f32_v2_head"), [Algorithm.BSDIFF4])
    reason, _ = refused(hostile, tmp_path, delta)
    assert reason == "bad delta: delta was made for another source model (source sha256 mismatch)"


def test_a_delta_signed_longer_than_the_model_is_never_fetched(hostile, tmp_path):
    """A delta signed longer than the model it rebuilds is not worth fetching (and
    ``max_model_bytes`` caps every download): the device takes the full model."""
    _, _, length = signed_v2(hostile)
    limit = length + 1000
    hostile.repo.add_delta(DELTA, bytes(limit + 1), {})
    state_dir = hostile.device(tmp_path)
    with RecordingServer(hostile.repo.dir) as server:
        config = CycleConfig(hostile.root, max_model_bytes=limit)
        saved = Cycle(UpdaterDevice(state_dir), config).start(Offer(server.url, "kws/2.tflite"))
    assert (saved.state, saved.fetch) == (State.TRIAL, "kws/2.tflite")
    assert not [path for path in server.requests if "/deltas/" in path]
    assert assert_consistent(state_dir, {hostile.v1, hostile.v2})[0] == hostile.v2
