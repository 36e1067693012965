"""Helpers for the updater tests: a signed repository served over real HTTP from a thread, the
update worker run as a real process, and the consistency check every crash test ends with."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from agent.updater.device import UpdaterDevice
from agent.updater.states import State
from edgefleet.models import bands, model_path
from firmware_sim.fleet.releases import sign_model
from gateway.releases.model_inspect import ReleaseOptions, build_model_meta
from gateway.releases.repository import Repository
from gateway.serving.server import RepositoryServer

REPO = Path(__file__).resolve().parents[2]
FAST = ReleaseOptions(samples=8, gate_samples=4)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model(name: str) -> bytes:
    return model_path(name).read_bytes()


def release(
    repo: Repository,
    data: bytes,
    version: int,
    options: ReleaseOptions = FAST,
    signed_as: bytes | None = None,
    edit_outputs=None,
):
    """Sign ``data`` as kws ``version`` (see ``sign_model``); with an evaluation set, as
    ``edgefleet release add --eval-set`` does."""
    if options.eval_set is not None:
        inspected = build_model_meta(data, "kws", version, options)
        return repo.add_release(
            inspected.meta, data, inspected.gate, eval_bytes=inspected.eval_bytes
        )
    return sign_model(repo, data, "kws", version, options, signed_as, edit_outputs)


def write_eval_set(path: Path, shift: float = 0.0, count: int = 200, seed: int = 11) -> Path:
    """A labelled evaluation set of banded inputs (``shift`` below 0 dims the bands: the
    bundled models do worse on it) as the operator gives it: float32 inputs and labels."""
    inputs, labels = bands.make(np.random.default_rng(seed), count, shift)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, inputs=inputs, labels=labels)
    return path


def with_eval_set(path: Path, shift: float, minimum: float, below: bool = False, count: int = 200):
    """``FAST`` options with a labelled evaluation set of ``count`` inputs written to ``path``."""
    return replace(
        FAST,
        eval_set=write_eval_set(path, shift, count),
        min_accuracy=minimum,
        sign_below_minimum=below,
    )


@contextmanager
def served(repo_dir: Path) -> Iterator[str]:
    """The gateway's repository server (aiohttp, with Range) on loopback, in its own thread."""
    loop = asyncio.new_event_loop()
    server = RepositoryServer(repo_dir)
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve():
        async with server:
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server.url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def worker(state_dir: Path, root: Path, *args: str, hook: str | None = None, trace=None):
    """Run the update worker as a real process; ``hook`` names where it SIGKILLs itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_FAULT")}
    if hook:
        env["EDGEFLEET_FAULT_HOOK"] = hook
    if trace:
        env["EDGEFLEET_FAULT_TRACE"] = str(trace)
    command = [sys.executable, "-m", "agent.updater.worker", "--state-dir", str(state_dir)]
    command += ["--root", str(root), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def final(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])["final"]


def transitions(result) -> list[str]:
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return [line["state"] for line in lines if "state" in line]


def assert_runs_gated(state_dir: Path, passed: set[str]) -> None:
    """The active pointer names a model whose bytes are a signed target that passed the gate."""
    pointer = UpdaterDevice(state_dir).slots.pointer()
    assert pointer is not None, "no active model"
    active_bytes = UpdaterDevice(state_dir).slots.path(pointer.active.slot).read_bytes()
    assert sha(active_bytes) == pointer.active.sha256, "active slot does not hold its record"
    assert pointer.active.sha256 in passed, f"active model {pointer.active.target} never passed"


def assert_consistent(state_dir: Path, passed: set[str]) -> tuple[str, State]:
    """``assert_runs_gated``, and the saved state agrees with the active pointer.
    Returns (active sha256, state)."""
    assert_runs_gated(state_dir, passed)
    device = UpdaterDevice(state_dir)
    saved = device.store.load()
    pointer = device.slots.pointer()
    if saved.state == State.TRIAL:
        assert pointer.previous is not None and device.slots.holds(pointer.previous)
        assert pointer.active == saved.candidate and pointer.previous == saved.incumbent
    else:
        assert pointer.previous is None, f"{saved.state} with a fallback slot left over"
    if saved.state == State.COMMITTED:
        assert pointer.active == saved.candidate
    if saved.state in (State.ROLLED_BACK, State.REFUSED) and saved.incumbent:
        assert pointer.active == saved.incumbent
    return pointer.active.sha256, saved.state
