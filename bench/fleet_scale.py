"""The largest fleet this machine simulates with one gateway and one mosquitto while telemetry
stays lossless, and the time a staged rollout takes on it.

For each fleet size (rising), ``edgefleet sim`` runs a generated scenario: N real agents
(``edgefleet agent run`` processes, the kws float32 model at ``--rate`` inferences per second
each), a signed head-only fine-tune rolled out in stages 10/50/100 % with no soak, and a wait
for completion. Every agent downloads its delta, passes the health gate and a 3 s probation with
the incumbent in shadow. Measured from the simulator's report: records produced per second
(the offered load), records lost (sent - delivered unique - dropped counted; the largest
lossless fleet is the largest size where this is 0 and the rollout completed), the rollout's
wall time (start to completion, as the simulator's wait step saw it) and the time to bring the
fleet up. The baseline for the rollout time is the same rollout on the smallest fleet, measured
in the same run: the ratio shows how rollout time grows with the fleet.

Sizes stop at the first one that loses a record, fails its rollout, or does not fit the time
limit. Agents are ~65 MB each: 200 need about 13 GB.

    python bench/fleet_scale.py [--sizes 10,20,40] [--rate 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from firmware_sim.fleet.runner import Runner
from firmware_sim.fleet.scenario import parse

SCENARIO = {
    "name": "fleet-scale",
    "seed": 11,
    "fleet": {"model": "fixture:kws_f32_v1", "name": "kws"},
    "step": [
        {"at": "1s", "do": "release", "model": "fixture:kws_f32_v2_head", "version": 2},
        {"at": "2s", "do": "rollout", "version": 2, "stages": [10, 50, 100], "soak": 0},
        {"at": "2s", "do": "wait", "until": "rollout:completed", "timeout": "600s"},
    ],
    "time_limit": "900s",
    "expect": {"telemetry_lost": 0, "rollout_state": "completed"},
}


def run_size(devices: int, rate: float, workdir: Path) -> dict:
    data = json.loads(json.dumps(SCENARIO))
    data["fleet"] |= {"devices": devices, "rate_hz": rate}
    scenario = parse(data, f"fleet-scale-{devices}", Path("."))
    report = asyncio.run(Runner(scenario, workdir / str(devices)).run())
    steps = {s["index"]: s for s in report["steps"]}
    rollout_s = steps[2]["at_s"] - steps[1]["at_s"] if len(steps) == 3 else None
    return {
        "devices": devices,
        "startup_s": report["startup_s"],
        "rollout_s": round(rollout_s, 1) if rollout_s is not None else None,
        "rollout_state": report["rollout_state"],
        "records_per_s": report["telemetry_per_s"],
        "sent": report["telemetry_sent"],
        "lost": report["telemetry_lost"],
        "dropped": report["telemetry_dropped_counted"],
        "on_target": report["devices_on_target"],
        "passed": report["passed"],
        "timeline": report["rollout_timeline"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,20,40", help="fleet sizes, rising")
    parser.add_argument("--rate", type=float, default=10.0, help="inferences/s per device")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            row = run_size(size, args.rate, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
            if not row["passed"]:
                break
    passed = [r for r in rows if r["passed"]]
    base = rows[0]["rollout_s"] if rows and rows[0]["rollout_s"] else None
    for row in rows:
        row["rollout_vs_smallest"] = (
            round(row["rollout_s"] / base, 2) if base and row["rollout_s"] else None
        )
    largest = max(passed, key=lambda r: r["devices"]) if passed else None
    result = {
        "largest_lossless_fleet": largest["devices"] if largest else 0,
        "its_rollout_s": largest["rollout_s"] if largest else None,
        "limit_reached": len(passed) < len(rows),
        "rate_hz_per_device": args.rate,
        "sizes": rows,
    }
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
