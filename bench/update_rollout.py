"""What a model update costs a device, and how fast a staged rollout reaches a fleet.

1. Bytes on the wire per device, for every bundled pair (a head-only and a full fine-tune of
   each base model). Versions 1 and 2 are signed into a real repository; a device-side
   ``TrustedRepository`` first refreshes against version 1 alone and looks up ``kws/1.tflite``
   (the metadata a device running v1 holds). Then v2 is signed, ``DeltaService.offer`` chooses
   what the device fetches (a delta it signs, or the full model), and the device does what the
   updater's plan and download steps do: a refresh, a look-up of the model and of the delta
   path, the download of the offered target and of the model's gate vectors (the agent's own
   fetch paths: its TUF fetcher and its Range download, both asking for gzip where it helps).
   The repository is served over loopback HTTP by the gateway's repository server; each
   answered request counts the body it sent (compressed or not; HTTP headers are not counted,
   a 404 counts nothing).
   Reported: the fetched target, the gate vectors and the TUF metadata of that update, their
   total, and the total against the full model and against its gzip (level 9).
2. Peak memory of ``apply_delta(old, delta)``: the ``tracemalloc`` peak over the call (the
   rebuilt model included; the inputs were allocated before), as a multiple of the model's
   size, median of several runs. tracemalloc sees liblzma's dictionary and state (CPython
   allocates them on its heap), not zlib's window. The same for ``vision_f32_v1`` against a
   synthetic fine-tune: every float32 weight tensor multiplied by ``1 + N(0, 1e-3)``.
3. Rollout time: a real mosquitto, the real gateway daemon (``edgefleet gateway run`` with a
   ``[repository]`` and a ``[rollouts]`` section, ``tick_s`` 0.2) serving a release imported
   through ``edgefleet gateway import-release``, and ``--agents`` simulated devices (one paho
   client each, client id = device id, answering an offer with the real Event and Status
   payloads after 50 ms, without downloading). The time is the wall time of
   ``edgefleet rollout start --model kws --version 2 --stages 1,10,50,100 --soak 0 --wait``
   (delta signing included) until it exits on completion; also the gateway's own
   ``updated_at - created_at``. Each run starts from a fresh broker, gateway and fleet; the
   median of ``--runs``. ``--real-agents N`` adds the same with N real ``edgefleet agent run``
   processes that download, apply the delta, pass the health gate and a 2 s probation.

    python bench/update_rollout.py [--agents 100] [--runs 3] [--real-agents 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai_edge_litert import schema_py_generated as tflite_schema
from aiohttp import web
from delta_codec import apply_peak

from agent.trust import TrustedRepository, TrustError
from agent.updater.download import DownloadLimits
from agent.updater.verified import fetch_verified
from edgefleet.models import model_pairs, model_path
from firmware_sim.broker import BrokerConfig, Mosquitto, free_port
from gateway.releases.commands import KEEP_VERSIONS
from gateway.releases.model_inspect import ReleaseOptions, build_model_meta
from gateway.releases.repository import Repository
from gateway.serving.deltas import DeltaService, Offer
from gateway.serving.server import make_app
from protocol.delta import apply_delta, delta_target_path, make_delta, read_header
from tests.agent.agent_support import AgentProcess, agent_config, write_config
from tests.conftest import GATEWAY_USER
from tests.gateway.release_support import sign
from tests.gateway.rollouts.rollout_support import FAST_PROBATION, Fleet, cli, import_release
from tests.gateway.support import Gateway, gateway_config, wait_for
from tests.updater.conftest import provision

STAGES = "1,10,50,100"
# Earlier releases of the same name before the measured update (each a distinct fine-tune of
# this model), signed as `release add` signs them: the targets metadata keeps listing the
# newest KEEP_VERSIONS, so what a device fetches stops growing.
GROWTH_RELEASES = 9
HISTORY_MODEL = "kws_f32_v2_full"
APPLY_RUNS = 5


# -- 1. bytes on the wire ------------------------------------------------------------------------


@contextlib.contextmanager
def counting_server(repo_dir: Path):
    """The gateway's repository server in a thread; yields (url, {path: body bytes sent})."""
    sent: dict[str, int] = {}

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if response.status in (200, 206):
            sent[request.path] = sent.get(request.path, 0) + (response.content_length or 0)

    app = make_app(repo_dir)
    app.on_response_prepare.append(count)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", sent
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def device_update(
    tuf_dir: Path, url: str, name: str, offer: Offer, work: Path, old_version: int
) -> str:
    """What the updater fetches for ``offer``; returns the gate vectors' target path."""
    trust = TrustedRepository(tuf_dir, url)
    gate_path = trust.target(offer.target).model_meta().gate.fetched[0]
    with contextlib.suppress(TrustError):
        trust.target(delta_target_path(name, old_version, old_version + 1))
    for path in (offer.fetch, gate_path):
        fetch_verified(trust, url, trust.target(path), work, DownloadLimits())
    return gate_path


def release_as_operator(repo: Repository, data: bytes, name: str, version: int) -> None:
    """Sign as `release add` does, pruning to its default number of listed versions."""
    inspected = build_model_meta(data, name, version, ReleaseOptions(samples=8, gate_samples=4))
    repo.add_release(inspected.meta, data, inspected.gate, keep_versions=KEEP_VERSIONS)


def wire_row(pair: dict, work: Path, history: int = 0) -> dict:
    """One update from the pair's old model to its new one, after ``history`` earlier
    releases of the same model name (other fine-tunes), whose entries the targets metadata
    still lists."""
    name = "kws"
    repo = Repository.init(work / "repo")
    earlier = model_path(HISTORY_MODEL).read_bytes()
    for version in range(1, history + 1):
        release_as_operator(repo, fine_tuned(earlier, seed=version), name, version)
    old_version, new_version = history + 1, history + 2
    release_as_operator(repo, model_path(pair["old"]).read_bytes(), name, old_version)
    new = model_path(pair["new"]).read_bytes()
    with counting_server(repo.dir) as (url, sizes):
        tuf_dir = work / "tuf"
        TrustedRepository(tuf_dir, url, repo.metadata_dir / "1.root.json").target(
            f"{name}/{old_version}.tflite"
        )
        release_as_operator(repo, new, name, new_version)
        offer = DeltaService(repo).offer(name, new_version, from_version=old_version)
        sizes.clear()
        gate_path = device_update(tuf_dir, url, name, offer, work, old_version)
    metadata = sum(size for path, size in sizes.items() if path.startswith("/metadata/"))
    fetched = sum(size for path, size in sizes.items() if path.endswith(Path(offer.fetch).name))
    gate = sum(size for path, size in sizes.items() if path.endswith(Path(gate_path).name))
    assert fetched == offer.length, (sizes, offer)
    total = fetched + gate + metadata
    gz = len(gzip.compress(new, 9))
    budget = 3 * offer.length + 3 * 1024
    return {
        "pair": pair["name"],
        "releases_before": history,
        "fetch": offer.kind,
        "full_bytes": len(new),
        "gzip_bytes": gz,
        "fetched_bytes": fetched,
        "gate_bytes": gate,
        "metadata_bytes": metadata,
        "requests": len(sizes),
        "total_bytes": total,
        "total_over_full": round(total / len(new), 4),
        "total_over_gzip": round(total / gz, 4),
        "budget_bytes": budget,
        "within_budget": total <= budget,
    }


def wire_verdicts(rows: list[dict]) -> list[str]:
    """The head-only fine-tunes against their budget (3 x the delta + 3 KB), one line each."""
    lines = []
    for row in rows:
        if not row["pair"].endswith("_head"):
            continue
        earlier = row["releases_before"]
        after = f" after {earlier} earlier releases" if earlier else ""
        verdict = "met" if row["within_budget"] else "MISSED"
        lines.append(
            f"bytes per head-only update, {row['pair']}{after}: {row['total_bytes']} fetched "
            f"(delta {row['fetched_bytes']}, gate vectors {row['gate_bytes']}, metadata "
            f"{row['metadata_bytes']}), budget {row['budget_bytes']}: {verdict}"
        )
    return lines


def measure_wire(work: Path) -> list[dict]:
    rows = []
    runs = [(pair, 0) for pair in model_pairs()]
    runs.append((model_pairs()[0], GROWTH_RELEASES))
    for pair, history in runs:
        pair_dir = work / f"wire-{pair['name']}-{history}"
        pair_dir.mkdir()
        rows.append(wire_row(pair, pair_dir, history))
    return rows


# -- 2. peak memory of delta apply ---------------------------------------------------------------


def fine_tuned(model: bytes, seed: int = 1) -> bytes:
    """``model`` with every float32 weight tensor multiplied by ``1 + N(0, 1e-3)``."""
    data = bytearray(model)
    root = tflite_schema.Model.GetRootAsModel(data, 0)
    rng = np.random.default_rng(seed)
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            buffer = root.Buffers(tensor.Buffer())
            if tensor.Type() != tflite_schema.TensorType.FLOAT32 or not buffer.DataLength():
                continue
            weights = buffer.DataAsNumpy().view(np.float32)  # a view into ``data``
            weights *= 1 + rng.normal(0, 1e-3, weights.shape).astype(np.float32)
    return bytes(data)


def memory_row(name: str, old: bytes, new: bytes) -> dict:
    delta = make_delta(old, new)
    assert apply_delta(old, delta) == new
    peak = statistics.median(apply_peak(old, delta) for _ in range(APPLY_RUNS))
    return {
        "pair": name,
        "algorithm": read_header(delta).algorithm.name.lower(),
        "model_bytes": len(new),
        "delta_bytes": len(delta),
        "peak_bytes": int(peak),
        "peak_over_model": round(peak / len(new), 2),
    }


def measure_memory() -> list[dict]:
    rows = [
        memory_row(
            pair["name"],
            model_path(pair["old"]).read_bytes(),
            model_path(pair["new"]).read_bytes(),
        )
        for pair in model_pairs()
    ]
    vision = model_path("vision_f32_v1").read_bytes()
    rows.append(memory_row("vision_f32_perturbed", vision, fine_tuned(vision)))
    return rows


# -- 3. rollout time -----------------------------------------------------------------------------


def operator_repository(path: Path) -> Repository:
    repo = Repository.init(path)
    sign(repo, "kws_f32_v1", "kws", 1)
    sign(repo, "kws_f32_v2_head", "kws", 2)
    return repo


def start_broker(stack: contextlib.ExitStack, workdir: Path) -> Mosquitto:
    workdir.mkdir()
    broker = Mosquitto(BrokerConfig(workdir=workdir, port=free_port(), users=dict([GATEWAY_USER])))
    stack.callback(broker.kill)
    broker.start()
    return broker


def stop_gateway(gateway: Gateway) -> None:
    try:
        gateway.stop()
    finally:
        if gateway.proc.poll() is None:
            gateway.kill()


def start_gateway(
    stack: contextlib.ExitStack, workdir: Path, broker: Mosquitto, operator: Repository
) -> Gateway:
    repository = {
        "dir": workdir / "served",
        "keys": operator.keys.online,
        "listen": f"127.0.0.1:{free_port()}",
    }
    rollouts = {"tick_s": 0.2, "reoffer_s": 30}
    config = gateway_config(workdir, broker, None, repository=repository, rollouts=rollouts)
    gateway = Gateway(workdir, config)
    stack.callback(stop_gateway, gateway)
    gateway.start()
    import_release(gateway, operator)
    return gateway


def close_fleet(fleet: Fleet) -> None:
    """Disconnect every device before joining any: a client waiting to reconnect to a broker
    that is gone notices a disconnect only at its next second."""
    for device in fleet.devices:
        device.client.disconnect()
    for device in fleet.devices:
        device.client.loop_stop()


def start_sim_fleet(stack: contextlib.ExitStack, broker: Mosquitto, count: int) -> None:
    stack.callback(close_fleet, Fleet(broker, count))


def start_real_agents(
    stack: contextlib.ExitStack, broker: Mosquitto, count: int, url: str, root: Path, work: Path
) -> None:
    """``count`` agents on kws v1, each provisioned with the served repository's TUF metadata."""
    provision(work / "template", url, root)
    for i in range(count):
        device = f"ag{i:02d}"
        shutil.copytree(work / "template", work / f"state-{device}" / "update")
        tables = agent_config(work, broker, model_path("kws_f32_v1"), device=device)
        tables["inference"] = {"rate_hz": 25.0}
        tables["update"] = {"trusted_root": root, "probation": FAST_PROBATION}
        agent = AgentProcess(write_config(work / f"{device}.toml", tables))
        stack.callback(agent.kill)


def wait_online(config_path: Path, count: int) -> None:
    """Until the gateway's inventory holds ``count`` devices online on kws v1."""

    def ready() -> bool:
        done = cli(config_path, "gateway", "devices", "--json")
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        return sum(r["state"] == "online" and r["model_version"] == 1 for r in rows) >= count

    wait_for(ready, 90, f"{count} devices online on version 1", interval=0.3)


def rollout_once(work: Path, operator: Repository, count: int, real: bool) -> dict:
    with contextlib.ExitStack() as stack:
        broker = start_broker(stack, work / "broker")
        gateway = start_gateway(stack, work / "gateway", broker, operator)
        if real:
            url = f"http://{gateway.config['repository']['listen']}"
            root = operator.metadata_dir / "1.root.json"
            start_real_agents(stack, broker, count, url, root, work)
        else:
            start_sim_fleet(stack, broker, count)
        wait_online(gateway.config_path, count)
        started = time.monotonic()
        done = cli(
            gateway.config_path, "rollout", "start", "--model", "kws", "--version", "2",
            "--stages", STAGES, "--soak", "0", "--wait", "--json", timeout=180,
        )  # fmt: skip
        seconds = time.monotonic() - started
        final = json.loads(done.stdout) if done.stdout.strip() else {}
        if done.returncode != 0 or final.get("committed") != count:
            raise RuntimeError(f"rollout did not complete: {done.stderr.strip()} {final}")
        return {"seconds": seconds, "gateway_seconds": final["updated_at"] - final["created_at"]}


def rollout_row(real: bool, work: Path, operator: Repository, count: int, runs: int) -> dict:
    kind = "real agents" if real else "simulated"
    results = []
    for run in range(runs):
        run_dir = work / f"rollout-{kind.replace(' ', '-')}-{run}"
        run_dir.mkdir()
        results.append(rollout_once(run_dir, operator, count, real))
    seconds = statistics.median(r["seconds"] for r in results)
    return {
        "devices": kind,
        "count": count,
        "runs": runs,
        "seconds": [round(r["seconds"], 2) for r in results],
        "median_s": round(seconds, 2),
        "gateway_median_s": round(statistics.median(r["gateway_seconds"] for r in results), 2),
        "devices_per_s": round(count / seconds, 1),
    }


def measure_rollouts(work: Path, agents: int, real_agents: int, runs: int) -> list[dict]:
    operator = operator_repository(work / "operator")
    rows = [rollout_row(False, work, operator, agents, runs)]
    if real_agents:
        rows.append(rollout_row(True, work, operator, real_agents, runs))
    return rows


# -- report --------------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100, help="simulated devices")
    parser.add_argument("--real-agents", type=int, default=0, help="real agent processes")
    parser.add_argument("--runs", type=int, default=3, help="rollout runs per fleet")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        wire = measure_wire(work)
        results = {
            "verdicts": wire_verdicts(wire),
            "wire": wire,
            "apply_memory": measure_memory(),
            "rollout": measure_rollouts(work, args.agents, args.real_agents, args.runs),
        }
    print_table("Bytes a device fetches for one update (v1 -> v2)", results["wire"])
    print_table(f"Peak memory of apply_delta (median of {APPLY_RUNS})", results["apply_memory"])
    print_table(f"Rollout start -> completed, stages {STAGES}, soak 0", results["rollout"])
    print(f"\n(bench run time: {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
