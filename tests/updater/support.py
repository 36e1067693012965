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

from agent.updater.device import Device
from agent.updater.states import State
from edgefleet.models import model_path
from gateway.model_inspect import ReleaseOptions, build_model_meta
from gateway.repo_server import RepositoryServer
from gateway.repository import Repository
from protocol.model_meta import GateVectors

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
    """Sign ``data`` as kws ``version``. ``signed_as``: describe another model's signature
    instead; ``edit_outputs``: change the reference outputs (then re-hashed and signed)."""
    inspected = build_model_meta(signed_as or data, "kws", version, options)
    meta, gate_bytes = inspected.meta, inspected.gate_bytes
    if edit_outputs is not None:
        vectors = GateVectors.from_json(json.loads(gate_bytes))
        vectors = GateVectors(vectors.inputs, tuple(edit_outputs(o) for o in vectors.outputs))
        gate_bytes = json.dumps(vectors.to_json()).encode()
        meta = replace(meta, gate=replace(meta.gate, sha256=sha(gate_bytes)))
    return repo.add_release(meta, data, gate_bytes)


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
    pointer = Device(state_dir).slots.pointer()
    assert pointer is not None, "no active model"
    active_bytes = Device(state_dir).slots.path(pointer.active.slot).read_bytes()
    assert sha(active_bytes) == pointer.active.sha256, "active slot does not hold its record"
    assert pointer.active.sha256 in passed, f"active model {pointer.active.target} never passed"


def assert_consistent(state_dir: Path, passed: set[str]) -> tuple[str, State]:
    """``assert_runs_gated``, and the saved state agrees with the active pointer.
    Returns (active sha256, state)."""
    assert_runs_gated(state_dir, passed)
    device = Device(state_dir)
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


def one_class(data: bytes) -> bytes:
    """The float kws model with its classifier head replaced: zero weights and a bias that
    favours one class, so it predicts that class for every input. Edited in the flatbuffer's
    constant buffers (found by their exact bytes), so no TensorFlow is needed."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    output = interpreter.get_output_details()[0]
    classes = int(output["shape"][-1])
    edited = bytearray(data)
    found = {"bias": 0, "weights": 0}
    for detail in interpreter.get_tensor_details():
        shape = tuple(detail["shape"])
        if detail["dtype"] != np.float32 or not shape or shape[0] != classes:
            continue
        try:
            values = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        raw = values.astype("<f4").tobytes()
        if edited.count(raw) != 1 or not raw.strip(b"\0"):
            continue
        at = edited.index(raw)
        if len(shape) == 1:
            bias = np.full(classes, -10.0, dtype="<f4")
            bias[classes // 2] = 10.0
            edited[at : at + len(raw)] = bias.tobytes()
            found["bias"] += 1
        elif len(shape) == 2:
            edited[at : at + len(raw)] = bytes(len(raw))
            found["weights"] += 1
    assert found == {"bias": 1, "weights": 1}, found
    return bytes(edited)
