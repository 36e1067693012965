"""Fleet scale: how many devices one gateway on this machine serves losslessly through a broker
restart and a cloud outage while a staged rollout reaches all of them, and how long a rollout
to real agent processes takes, stage by stage.

1. Sweep (light mode, ``[fleet] mode = "light"``: each device is the agent's own code with its
   own MQTT session, spool, TUF metadata and slots; many share one host process per core). For
   each size, rising, ``edgefleet sim`` runs a generated scenario: the devices at ``--rate``
   inferences per second each, a signed head-only fine-tune rolled out in stages 1/10/50/100 %
   with no soak, a broker restart and a cloud outage while it runs, and a wait for completion.
   Measured from the simulator's report: records lost (sent - delivered - dropped counted;
   lossless means 0), the rollout's wall time (its start to completion as the wait step saw
   it, faults included), the time to bring the fleet up, and the gateway's CPU (% of one core
   over the run) and peak resident set. The sweep stops at the first size that loses a record,
   does not complete its rollout or does not fit its time limit; the largest lossless size is
   the answer.
2. Rollout of ``--rollout-agents`` real agent processes (``edgefleet agent run`` each, the kws
   float32 model at ``--rollout-rate``, probation on 10 inputs; at 10 Hz a hundred agents alone
   saturate two cores), stages 10/50/100 % with no soak and no fault: the wall
   time from ``rollout start`` to completion, and where it went per stage
   (``rollout_timeline``: offer, download, install, gate, probation, reporting; medians over
   each stage's devices). The baseline is the same rollout to ``--baseline-agents`` agents in
   the same run.

    python bench/fleet_scale.py [--sizes 100,250,500,1000] [--rate 1] [--rollout-agents 100]
                                [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from edgefleet import logs
from firmware_sim.fleet.runner import Runner
from firmware_sim.fleet.scenario import parse
from firmware_sim.fleet.timeline import rollout_wall_s

RELEASE = {"at": "1s", "do": "release", "model": "fixture:kws_f32_v2_head", "version": 2}
SWEEP = {
    "name": "fleet-sweep",
    "seed": 11,
    "fleet": {"model": "fixture:kws_f32_v1", "name": "kws", "mode": "light"},
    "step": [
        RELEASE,
        {"at": "2s", "do": "rollout", "version": 2, "stages": [1, 10, 50, 100], "soak": 0},
        {"at": "8s", "do": "fault", "kind": "broker-restart"},
        {"at": "15s", "do": "fault", "kind": "cloud-down", "for": "20s"},
        {"at": "16s", "do": "wait", "until": "rollout:completed", "timeout": "900s"},
    ],
    "time_limit": "1200s",
    "expect": {"telemetry_lost": 0, "rollout_state": "completed"},
}
# Probation on 10 inputs (5 s at 2 Hz, and at least its 3 s window): a retrained head agrees
# with its incumbent on ~90 % of them, so 10 decide as surely as the simulator's usual 40.
ROLLOUT = {
    "name": "agent-rollout",
    "seed": 12,
    "fleet": {"model": "fixture:kws_f32_v1", "name": "kws", "probation": {"min_samples": 10}},
    "step": [
        RELEASE,
        {"at": "2s", "do": "rollout", "version": 2, "stages": [10, 50, 100], "soak": 0},
        {"at": "2s", "do": "wait", "until": "rollout:completed", "timeout": "600s"},
    ],
    "time_limit": "900s",
    "expect": {"telemetry_lost": 0, "rollout_state": "completed"},
}


def simulate(template: dict, devices: int, rate: float, workdir: Path) -> dict:
    data = json.loads(json.dumps(template))
    data["fleet"] |= {"devices": devices, "rate_hz": rate}
    scenario = parse(data, f"{template['name']}-{devices}", Path("."))
    return asyncio.run(Runner(scenario, workdir / f"{template['name']}-{devices}").run())


def sweep_row(devices: int, rate: float, workdir: Path) -> dict:
    report = simulate(SWEEP, devices, rate, workdir)
    stages = (report["rollout_timeline"] or {}).get("stages", [])
    return {
        "devices": devices,
        "startup_s": report["startup_s"],
        "rollout_s": rollout_wall_s(report["steps"]),
        "rollout_state": report["rollout_state"],
        "records_per_s": report["telemetry_per_s"],
        "sent": report["telemetry_sent"],
        "lost": report["telemetry_lost"],
        "dropped": report["telemetry_dropped_counted"],
        "on_target": report["devices_on_target"],
        "gateway_cpu_percent": report.get("gateway_cpu_percent"),
        "gateway_rss_mb_peak": report.get("gateway_rss_mb_peak"),
        "broker_cpu_percent": report.get("broker_cpu_percent"),
        "stage_spans_s": [s["span_s"] for s in stages],
        "passed": report["passed"],
        "violations": report["violations"][:3],
    }


def rollout_row(devices: int, rate: float, workdir: Path) -> dict:
    report = simulate(ROLLOUT, devices, rate, workdir)
    timeline = report["rollout_timeline"] or {}
    return {
        "agents": devices,
        "rollout_s": rollout_wall_s(report["steps"]),
        "gateway_total_s": timeline.get("total_s"),
        "passed": report["passed"],
        "violations": report["violations"][:3],
        "stages": timeline.get("stages", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,250,500,1000", help="light fleet sizes, rising")
    parser.add_argument("--rate", type=float, default=1.0, help="inferences/s per light device")
    parser.add_argument("--rollout-agents", type=int, default=100, help="0: no agent rollout")
    parser.add_argument("--baseline-agents", type=int, default=10)
    parser.add_argument("--rollout-rate", type=float, default=2.0, help="inferences/s per agent")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    logs.configure("warning")
    result: dict = {"rate_hz_per_device": args.rate}
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        rows = []
        for size in (int(s) for s in args.sizes.split(",") if s):
            rows.append(sweep_row(size, args.rate, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
            if not rows[-1]["passed"]:
                break
        passed = [r for r in rows if r["passed"]]
        largest = max(passed, key=lambda r: r["devices"]) if passed else None
        result |= {
            "largest_lossless_fleet": largest["devices"] if largest else 0,
            "its_rollout_s": largest["rollout_s"] if largest else None,
            "limit_reached": len(passed) < len(rows),
            "sizes": rows,
        }
        if args.rollout_agents:
            base = rollout_row(args.baseline_agents, args.rollout_rate, Path(tmp))
            full = rollout_row(args.rollout_agents, args.rollout_rate, Path(tmp))
            both = full["rollout_s"] and base["rollout_s"]
            ratio = full["rollout_s"] / base["rollout_s"] if both else None
            result["agent_rollout"] = {
                "rate_hz_per_agent": args.rollout_rate,
                "baseline": base,
                "measured": full,
                "ratio_to_baseline": round(ratio, 2) if ratio else None,
                "target_s": 30,
            }
            print(json.dumps(result["agent_rollout"]), flush=True)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
