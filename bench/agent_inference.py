"""Agent pipeline throughput against a bare LiteRT invoke loop, steady RSS, and idle CPU.

* Throughput: ``edgefleet agent run`` (replay source, as fast as it can, real mosquitto, every
  record spooled and published) against a bare ``set_tensor/invoke/get_tensor`` loop on the same
  model and inputs, both on one interpreter thread, in interleaved rounds (bare, then agent).
  The ratio is the median of the rounds' agent/bare ratios (target 0.97), reported with its
  quartiles and range.
* Steady RSS: the agent with LiteRT and the ~100 KB keyword model at 100 inferences/s, sampled
  after a warm-up.
* Idle CPU: the agent after its replay source ended (connected, nothing to do), over a window.

    python bench/agent_inference.py [--model vision_f32_v1] [--seconds 5] [--rounds 10] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from edgefleet import tomlconfig  # noqa: E402
from edgefleet.models import model_path  # noqa: E402
from firmware_sim.broker import BrokerConfig, Mosquitto, free_port  # noqa: E402
from protocol.topics import Status  # noqa: E402

SAMPLES = 64
RATIO_TARGET = 0.97
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def bare_loop(model: Path, inputs: np.ndarray, seconds: float) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model.read_bytes(), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    batch = inputs.astype(inp["dtype"])
    for i in range(20):
        interpreter.set_tensor(inp["index"], batch[i % len(batch)][None])
        interpreter.invoke()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        interpreter.set_tensor(inp["index"], batch[done % len(batch)][None])
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
        done += 1
    elapsed = time.perf_counter() - start
    return {"inferences_per_s": done / elapsed, "invoke_ms": elapsed / done * 1000}


class StatusWatch:
    """The agent's retained status, as the gateway would see it."""

    def __init__(self, port: int):
        self.latest: Status | None = None
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-watch")
        self._client.username_pw_set("bench", "bench-password")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe("edgefleet/+/dev/+/status", qos=1)
        self._client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        status = Status.decode(message.payload)
        with self._lock:
            if status.state == "online":
                self.latest = status

    def after(self, ts_ms: int, timeout: float = 30.0) -> Status:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.latest and self.latest.ts_ms > ts_ms:
                    return self.latest
            time.sleep(0.05)
        raise RuntimeError("no status from the agent")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def write_config(work: Path, name: str, broker: Mosquitto, **tables: dict) -> Path:
    base = {
        "device": {"id": name, "site": "bench"},
        "mqtt": dict(
            zip(("username", "password"), broker.login(name), strict=True), url=broker.url
        ),
        "state": {"dir": str(work / f"state-{name}")},
        "telemetry": {"status_interval_s": 1.0},
    }
    for table, values in tables.items():
        base.setdefault(table, {}).update(values)
    path = work / f"{name}.toml"
    path.write_text(tomlconfig.dumps(base))
    return path


def start_agent(config: Path, work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(work / f"{config.stem}.log").open("wb"),
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )


def stop_agent(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)


def agent_throughput(work, broker, watch, model: Path, seconds: float, trials: int) -> list:
    """(inferences/s, invoke ms) of the agent over ``trials`` windows after a warm-up."""
    config = write_config(
        work,
        "thr",
        broker,
        model={"path": str(model)},
        source={"kind": "replay", "path": str(work / "inputs.npy"), "loop": True},
        inference={"rate_hz": 0.0, "max_chunk": SAMPLES},
    )
    proc = start_agent(config, work)
    rates = []
    try:
        first = watch.after(0)
        start = watch.after(first.ts_ms + 3000)
        for _ in range(trials):
            end = watch.after(start.ts_ms + int(seconds * 1000))
            count = end.counters["inferences"] - start.counters["inferences"]
            rate = count / ((end.ts_ms - start.ts_ms) / 1000)
            rates.append((rate, end.counters["latency_us"] / 1000))
            start = end
    finally:
        stop_agent(proc)
    return rates


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def agent_rss(work, broker, watch, seconds: float) -> dict:
    model = model_path("kws_f32_v1")
    config = write_config(
        work, "rss", broker, model={"path": str(model)}, inference={"rate_hz": 100.0}
    )
    proc = start_agent(config, work)
    try:
        first = watch.after(0)
        watch.after(first.ts_ms + 5000)
        samples = []
        for _ in range(int(seconds * 2)):
            samples.append(rss_kb(proc.pid))
            time.sleep(0.5)
    finally:
        stop_agent(proc)
    return {
        "model": model.name,
        "model_kb": round(model.stat().st_size / 1024, 1),
        "rss_mb_max": round(max(samples) / 1024, 1),
        "rss_mb_last": round(samples[-1] / 1024, 1),
    }


def agent_idle(work, broker, watch, seconds: float) -> dict:
    np.save(work / "few.npy", np.zeros((8, 49, 10), np.float32))
    config = write_config(
        work,
        "idle",
        broker,
        model={"path": str(model_path("kws_f32_v1"))},
        source={"kind": "replay", "path": str(work / "few.npy"), "loop": False},
        telemetry={"status_interval_s": 30.0, "batch_age_s": 0.1},
    )
    proc = start_agent(config, work)
    try:
        watch.after(0)
        time.sleep(3.0)  # the source ends at once; let the last batch and status go out
        before, start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu_seconds(proc.pid) - before, time.monotonic() - start
    finally:
        stop_agent(proc)
    return {"cpu_percent": round(100 * used / elapsed, 3), "window_s": round(elapsed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vision_f32_v1", help="bundled model for throughput")
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window")
    parser.add_argument(
        "--rounds", type=int, default=10, help="interleaved bare/agent rounds (median ratio)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    model = model_path(args.model)
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        work = Path(tmp)
        from ai_edge_litert.interpreter import Interpreter

        probe = Interpreter(model_content=model.read_bytes())
        shape = probe.get_input_details()[0]["shape"][1:]
        inputs = np.random.default_rng(0).normal(0, 1, (SAMPLES, *shape)).astype(np.float32)
        np.save(work / "inputs.npy", inputs)

        (work / "broker").mkdir()
        broker = Mosquitto(
            BrokerConfig(work / "broker", free_port(), users={"bench": "bench-password"})
        )
        broker.start()
        watch = StatusWatch(broker.config.port)
        try:
            # Alternate bare and agent runs so that a noisy neighbour affects both alike.
            bare, agent = [], []
            for _ in range(args.rounds):
                bare.append(bare_loop(model, inputs, args.seconds))
                agent += agent_throughput(work, broker, watch, model, args.seconds, 1)
            rss = agent_rss(work, broker, watch, args.seconds / 2)
            idle = agent_idle(work, broker, watch, args.seconds)
        finally:
            watch.close()
            broker.stop()

    bare_rate = statistics.median(b["inferences_per_s"] for b in bare)
    agent_rate = statistics.median(rate for rate, _ in agent)
    per_round = [a / b["inferences_per_s"] for (a, _), b in zip(agent, bare, strict=True)]
    invokes = [b["invoke_ms"] for b in bare]
    ratio = statistics.median(per_round)
    quartiles = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
    results = {
        "model": args.model,
        "rounds": args.rounds,
        "bare_invoke_ms": round(statistics.median(b["invoke_ms"] for b in bare), 3),
        "bare_inferences_per_s": round(bare_rate, 1),
        "agent_inferences_per_s": round(agent_rate, 1),
        "agent_invoke_ms": round(statistics.median(ms for _, ms in agent), 3),
        "ratio": round(ratio, 3),
        "ratio_target": RATIO_TARGET,
        "ratio_quartiles": [round(quartiles[0], 3), round(quartiles[2], 3)],
        "ratio_range": [round(min(per_round), 3), round(max(per_round), 3)],
        "ratio_per_round": [round(r, 3) for r in per_round],
        "bare_invoke_ms_range": [round(min(invokes), 3), round(max(invokes), 3)],
        "verdicts": [
            f"agent/bare inference ratio {ratio:.3f} (median of {len(per_round)} interleaved "
            f"rounds, quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}): "
            + ("met" if ratio >= RATIO_TARGET else "MISSED")
            + f", target {RATIO_TARGET}; the bare loop alone took {min(invokes):.3f}-"
            f"{max(invokes):.3f} ms per invoke from round to round on this machine"
        ],
        **{f"steady_{k}": v for k, v in rss.items()},
        "steady_rss_target_mb": 50,
        "idle_cpu_percent": idle["cpu_percent"],
        "idle_window_s": idle["window_s"],
    }
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
