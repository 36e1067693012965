"""Where the agent's memory goes: its steady RSS against the 50 MB target, the floor no agent
can go below, and what each imported package adds.

* Steady RSS: a real ``edgefleet agent run`` (the bundled ~94 KB keyword model, a replay source
  looping over recorded inputs at 100 inferences/s, plain MQTT to a real mosquitto, the updater
  on, no capture campaign), VmRSS from /proc sampled after a warm-up. On SIGUSR1 the process
  writes the names in its ``sys.modules`` (a handler installed by the launcher, not by the
  agent), so the breakdown is of what this very process imported.
* Floor: a fresh interpreter that imports numpy and LiteRT and loads, allocates and invokes the
  same model: what any Python agent running that model pays.
* Breakdown: a second fresh interpreter, after the floor, imports the agent's modules one by one
  in the order ``sys.modules`` lists them (the order their imports finished: dependencies before
  what needs them), reading VmRSS after each; the increase is charged to the module's top-level
  package. When the agent left TLS out (``!ssl`` in its list), the interpreter does the same
  (agent.lean), so paho and aiomqtt are charged as they load in the agent.

    python bench/agent_memory.py [--seconds 5] [--rate 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.agent_inference import StatusWatch, rss_kb, write_config  # noqa: E402
from edgefleet.models import model_path  # noqa: E402
from firmware_sim.broker import BrokerConfig, Mosquitto, free_port  # noqa: E402

TARGET_MB = 50
MODEL = "kws_f32_v1"

# Runs the CLI as ``python -m edgefleet.cli`` would, plus a SIGUSR1 handler that lists the
# process's modules into $MODULES_OUT (``!name`` for one the process blocked from importing).
LAUNCHER = """
import os, runpy, signal, sys
def dump(*_):
    with open(os.environ["MODULES_OUT"], "w") as out:
        out.write("\\n".join(("!" if m is None else "") + n for n, m in list(sys.modules.items())))
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["edgefleet", *sys.argv[1:]]
runpy.run_module("edgefleet.cli", run_name="__main__", alter_sys=True)
"""

# Reads VmRSS in a fresh interpreter: at start, after numpy, after LiteRT with the model loaded
# and invoked (the floor), then after each module named on stdin.
BREAKDOWN = """
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
steps = [("python", rss())]
import numpy as np
steps.append(("numpy", rss(), []))
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
detail = interpreter.get_input_details()[0]
interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
interpreter.invoke()
steps.append(("ai_edge_litert+model", rss(), []))
def step(name):
    before, tops = rss(), {m.split(".")[0] for m in sys.modules}
    try:
        importlib.import_module(name)
    except Exception:
        return
    new = sorted({m.split(".")[0] for m in sys.modules} - tops - {name.split(".")[0]})
    steps.append((name, rss() - before, new))
names = sys.stdin.read().split()
for name in names:
    if name.startswith("!"):
        sys.modules[name[1:]] = None
if "!ssl" in names:  # as agent.lean leaves TLS out: paho and aiomqtt see its stand-in
    from agent.lean import stand_in
    step("asyncio")
    sys.modules["ssl"] = stand_in()
    step("aiomqtt")
    sys.modules["ssl"] = None
for name in names:
    if name not in sys.modules and not name.startswith("!"):
        step(name)
print(json.dumps(steps))
"""


def steady_agent(work: Path, broker: Mosquitto, watch: StatusWatch, seconds: float, rate: float):
    np.save(work / "inputs.npy", np.zeros((64, 49, 10), np.float32))
    config = write_config(
        work,
        "mem",
        broker,
        model={"path": str(model_path(MODEL))},
        source={"kind": "replay", "path": str(work / "inputs.npy"), "loop": True},
        inference={"rate_hz": rate},
    )
    modules_out = work / "modules.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "agent", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(work / "agent.log").open("wb"),
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "MODULES_OUT": str(modules_out)},
    )
    try:
        first = watch.after(0)
        watch.after(first.ts_ms + 5000)  # warm-up: the spool, the link and drift windows fill
        samples = []
        for _ in range(int(seconds * 2)):
            samples.append(rss_kb(proc.pid))
            time.sleep(0.5)
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not modules_out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        modules = modules_out.read_text().split()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    return samples, modules


def breakdown(modules: list[str]) -> tuple[list[list], dict[str, tuple[int, set[str]]]]:
    """(floor steps in KB, per top-level package: KB its imports added, and the other packages
    they brought in)."""
    names = [m for m in modules if not m.startswith("__")]
    done = subprocess.run(
        [sys.executable, "-c", BREAKDOWN, str(model_path(MODEL))],
        input="\n".join(names),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    steps = json.loads(done.stdout)
    floor, rest = steps[:3], steps[3:]
    packages: dict[str, tuple[int, set[str]]] = {}
    for name, kb, brought in rest:
        total, with_ = packages.get(name.split(".")[0], (0, set()))
        packages[name.split(".")[0]] = (total + kb, with_ | set(brought))
    return floor, packages


def measure(seconds: float, rate: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="agent-memory-") as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(
            BrokerConfig(work / "broker", free_port(), users={"bench": "bench-password"})
        )
        broker.start()
        watch = StatusWatch(broker.config.port)
        try:
            samples, modules = steady_agent(work, broker, watch, seconds, rate)
        finally:
            watch.close()
            broker.stop()
    floor_steps, packages = breakdown(modules)
    floor_kb = floor_steps[-1][1]
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    imports_kb = sum(kb for kb, _ in packages.values())
    shown = sorted(((n, *p) for n, p in packages.items() if p[0] >= 256), key=lambda p: -p[1])
    small = {n: kb for n, (kb, _) in packages.items() if kb < 256}
    rows = [{"part": "python", "mb": mb(floor_steps[0][1])}]
    rows.append({"part": "numpy", "mb": mb(floor_steps[1][1] - floor_steps[0][1])})
    rows.append({"part": "ai_edge_litert + model", "mb": mb(floor_kb - floor_steps[1][1])})
    rows += [
        {"part": f"import {name}" + (f" (with {', '.join(sorted(w))})" if w else ""), "mb": mb(kb)}
        for name, kb, w in shown
    ]
    rows.append({"part": f"import others ({len(small)} packages)", "mb": mb(sum(small.values()))})
    running = max(samples) - floor_kb - imports_kb
    rows.append({"part": "running (data, threads, buffers)", "mb": mb(running)})
    within = max(samples) <= TARGET_MB * 1024
    largest = ", ".join(f"{name} {mb(kb)}" for name, kb, _ in shown[:6])
    verdict = (
        f"steady RSS {mb(max(samples))} MB: within the {TARGET_MB} MB target"
        if within
        else f"MISSED: steady RSS {mb(max(samples))} MB, target {TARGET_MB} MB, missed by"
        f" {mb(max(samples) - TARGET_MB * 1024)} MB: the floor (python,"
        f" numpy, LiteRT and the model) is {mb(floor_kb)} MB and leaves"
        f" {mb(TARGET_MB * 1024 - floor_kb)} MB; the imports take {mb(imports_kb)} MB"
        f" (largest: {largest}) and running {mb(running)} MB"
    )
    return {
        "model": MODEL,
        "rate_hz": rate,
        "steady_rss_mb_max": mb(max(samples)),
        "steady_rss_mb_last": mb(samples[-1]),
        "target_mb": TARGET_MB,
        "within_target": within,
        "verdicts": [verdict],
        "floor_mb": mb(floor_kb),
        "imports_mb": mb(imports_kb),
        "modules": len(modules),
        "loaded": sorted({m.split(".")[0] for m in modules if not m.startswith(("_", "!"))}),
        "where": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="steady-state window")
    parser.add_argument("--rate", type=float, default=100.0, help="inferences per second")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = measure(args.seconds, args.rate)
    for row in results["where"]:
        print(f"{row['mb']:>6.1f} MB  {row['part']}")
    print(
        f"{results['steady_rss_mb_max']:>6.1f} MB  agent steady RSS (max; target {TARGET_MB} MB,"
        f" floor {results['floor_mb']} MB)"
    )
    print(results["verdicts"][0])
    print("loaded:", " ".join(results["loaded"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
