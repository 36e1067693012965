"""What a light device costs and how a light fleet fares: runs a scenario in light mode (by
default ``scenarios/by-hand/fleet_1000.toml``, at ``--devices`` devices) while sampling the light
host processes from /proc every second: their RSS, threads and CPU time.

Reported: the time to bring the fleet up, the rollout's wall time, records lost, host RSS (peak
and during the steady window before the first step: per device, and an idle host's own), CPU per
device during the steady window (percent of one core), threads per host, and the share of the
hosts' CPU spent in their event loops (the agents' asyncio code: MQTT, status, the update
driver) rather than in their threads (SQLite, inference, update work).

    python bench/light_fleet.py [SCENARIO] [--devices 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgefleet import logs, tomlconfig
from firmware_sim.fleet.runner import Runner
from firmware_sim.fleet.scenario import parse
from firmware_sim.fleet.timeline import rollout_wall_s
from firmware_sim.fleet.usage import stat_cpu_seconds, stat_fields

REPO = Path(__file__).resolve().parents[1]
HOST = "firmware_sim.fleet.light_host"
PAGE = os.sysconf("SC_PAGE_SIZE")


def hosts() -> dict[int, tuple[int, float, int, float]]:
    """pid -> (RSS bytes, CPU seconds, threads, CPU seconds of the event loop's thread) of
    every light host of this machine's user."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if HOST not in (entry / "cmdline").read_text():
                continue
            fields = stat_fields(str(entry / "stat"))
            rss = int((entry / "statm").read_text().split()[1]) * PAGE
            main = stat_cpu_seconds(stat_fields(str(entry / "task" / entry.name / "stat")))
            found[int(entry.name)] = (rss, stat_cpu_seconds(fields), int(fields[17]), main)
        except (OSError, IndexError, ValueError):
            continue
    return found


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, dict]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.samples.append((time.monotonic(), hosts()))


def idle_host_rss() -> int:
    """An idle host's RSS with the agent imported, before any device."""
    proc = subprocess.Popen([sys.executable, "-m", HOST], stdin=subprocess.PIPE)
    time.sleep(3.0)
    rss = hosts().get(proc.pid, (0, 0.0, 0, 0.0))[0]
    proc.stdin.close()
    proc.wait(10)
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", type=Path,
                        default=REPO / "scenarios" / "by-hand" / "fleet_1000.toml")  # fmt: skip
    parser.add_argument("--devices", type=int, help="override fleet.devices")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    logs.configure("warning")
    data = tomlconfig.read(args.scenario, str(args.scenario))
    data["fleet"]["mode"] = "light"
    if args.devices:
        data["fleet"]["devices"] = args.devices
    scenario = parse(data, str(args.scenario), args.scenario.resolve().parent)
    devices = scenario.fleet.devices
    idle = idle_host_rss()
    sampler = Sampler()
    sampler.start()
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="light-fleet-") as tmp:
        report = asyncio.run(Runner(scenario, Path(tmp)).run())
    sampler.done.set()
    sampler.join()
    up = begun + report["startup_s"]
    first_step = min((s["at_s"] for s in report["steps"]), default=0.0)
    steady = [(t, h) for t, h in sampler.samples if up + 5 < t < up + first_step]
    peak = max(sum(v[0] for v in h.values()) for _, h in sampler.samples)
    result = {
        "devices": devices,
        "rate_hz": scenario.fleet.rate_hz,
        "startup_s": report["startup_s"],
        "rollout_s": rollout_wall_s(report["steps"]),
        "passed": report["passed"],
        "violations": report["violations"],
        "on_target": report["devices_on_target"],
        "telemetry_sent": report["telemetry_sent"],
        "telemetry_lost": report["telemetry_lost"],
        "hosts": len({pid for _, h in sampler.samples for pid in h}),
        "idle_host_rss_mb": round(idle / 2**20, 1),
        "peak_hosts_rss_mb": round(peak / 2**20, 1),
        "max_threads_per_host": max(v[2] for _, h in sampler.samples for v in h.values()),
        "steps": report["steps"],
    }
    if len(steady) >= 2:
        (t0, h0), (t1, h1) = steady[0], steady[-1]
        rss = sum(v[0] for v in h1.values())
        cpu = sum(h1[p][1] - h0[p][1] for p in h1 if p in h0)
        loop = sum(h1[p][3] - h0[p][3] for p in h1 if p in h0)
        result |= {
            "steady_hosts_rss_mb": round(rss / 2**20, 1),
            "steady_rss_per_device_mb": round((rss - idle * len(h1)) / devices / 2**20, 2),
            "steady_cpu_per_device_pct": round(100 * cpu / (t1 - t0) / devices, 3),
            "steady_cpu_in_event_loops": round(loop / cpu, 2) if cpu else None,
            "steady_window_s": round(t1 - t0, 1),
        }
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
