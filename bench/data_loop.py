"""The data loop on a drifting fleet: what reaches the cloud against forwarding everything, and
how many of the inputs the model found hard a capture campaign brought back under its budget.

``edgefleet sim``'s runner plays a generated scenario: ``--devices`` real agents (the kws float32
model on banded inputs at ``--rate`` Hz, capture on), ``--drifting`` of them with their bands
dimmed by ``--shift`` from the first second, a campaign ``margin < --threshold`` with
``per_device`` and ``total`` budgets at 5 s, and a fleet that runs on to ``--seconds``. The
gateway curates as a site would: samples kept under a per-device quota, inference records kept
when informative (the same ``margin < threshold``), one other raw record in 100, per-device
summaries every ``--summary-window`` seconds, everything else dropped.

* Cloud bytes: the record bytes the cloud confirmed over the record bytes the devices sent
  (``gateway status``: uncompressed NDJSON, samples included on both sides); target <= 0.1.
  The campaign's samples are a fixed budget that a short run cannot amortise, so the ratio
  without them on either side (the telemetry's own, which a long run approaches) is reported
  too. The compressed bytes of the batches the cloud accepted are counted as well (unfiltered
  traffic never travels, so its compressed size is not measured).
* Recall: the ground truth is the inference records in the cloud's dataset whose margin (top-1
  minus top-2, from ``top``) is below the threshold, per device, while that device's campaign
  ran (from its ``campaign_started`` to its ``campaign_ended`` event). Curation keeps every one
  of them, which the report checks: telemetry adds up with nothing lost, no sample was curated
  out, and every sample's input has its inference record in the dataset. Expected = sum over
  devices of min(informative inputs in its window, per_device), capped by the campaign's total;
  recall = distinct samples in the dataset / expected; target >= 0.9. Precision is the share of
  samples whose recorded margin is below the threshold (1.0 when the device's trigger is right);
  ``from_drifted`` the share of samples from drifted devices.

    python bench/data_loop.py [--devices 10] [--drifting 3] [--seconds 100] [--json PATH]
                              [--workdir DIR]    # keep the run's files (logs, dataset)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import duckdb  # noqa: E402
from aiohttp import web  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cloud.queries import source  # noqa: E402
from edgefleet import logs  # noqa: E402
from firmware_sim.fleet import world as world_module  # noqa: E402
from firmware_sim.fleet.cloud import Cloud  # noqa: E402
from firmware_sim.fleet.runner import Runner  # noqa: E402
from firmware_sim.fleet.scenario import parse  # noqa: E402
from firmware_sim.fleet.world import World  # noqa: E402

CAMPAIGN = "hard-inputs"
CLOUD_BYTES_TARGET = 0.1
RECALL_TARGET = 0.9
CAMPAIGN_KEYS = ("state", "reason", "received", "per_device", "total")
DEVICE_BYTES = "edgefleet_gateway_device_record_bytes"


def scenario(args: argparse.Namespace) -> dict:
    """The scenario as ``edgefleet sim`` reads it (``--write-scenario`` prints it as TOML)."""
    drifting = [f"dev{i:03d}" for i in range(args.drifting)]
    trigger = f"margin < {args.threshold:g}"
    return {
        "name": "data-loop-bench",
        "seed": 21,
        "time_limit": f"{args.seconds + 60:g}s",
        "fleet": {
            "devices": args.devices,
            "model": "fixture:kws_f32_v1",
            "name": "kws",
            "rate_hz": args.rate,
            "source": "bands",
            "capture": True,
        },
        "curation": {
            "summary_window_s": args.summary_window,
            "default": "drop",
            "rule": [
                {
                    "name": "sample-quota",
                    "stream": "samples",
                    "action": "quota",
                    "per_device": 2 * args.per_device,
                },
                {"name": "samples", "stream": "samples", "action": "keep"},
                {"name": "informative", "stream": "telemetry", "when": trigger, "action": "keep"},
                {"name": "raw-one-in-100", "stream": "telemetry", "action": "sample", "every": 100},
            ],
        },
        "step": [
            {"at": "1s", "do": "fault", "kind": "drift", "devices": drifting, "shift": args.shift},
            {
                "at": "5s",
                "do": "campaign",
                "name": CAMPAIGN,
                "trigger": trigger,
                "per_device": args.per_device,
                "total": args.total,
            },
            # The fleet runs on: a step that holds at once, so the timeline lasts this long.
            {
                "at": f"{args.seconds:g}s",
                "do": "wait",
                "until": "devices_on_target:all",
                "timeout": "10s",
            },
        ],
        "expect": {"telemetry_lost": 0, "bricked": 0},
    }


class MeteredCloud(Cloud):
    """The simulator's cloud, also counting the compressed bytes of the batches it accepted."""

    def __init__(self, seed: int, dataset_dir: Path) -> None:
        super().__init__(seed, dataset_dir)
        self.gzip_bytes = 0

    @web.middleware
    async def _faults(self, request: web.Request, handler) -> web.StreamResponse:
        response = await super()._faults(request, handler)
        if request.path == "/ingest" and response.status == 200:
            self.gzip_bytes += request.content_length or 0
        return response


class Observed(Runner):
    """The runner, keeping its world so the events the fleet sent can be read after the run."""

    world: World | None = None
    campaigns: list[dict]
    curated_out: dict
    device_bytes: dict[str, float]

    async def _timeline(self, world: World) -> None:
        self.world = world
        await super()._timeline(world)
        self.campaigns = (await world.gateway.get("/v1/campaigns"))["campaigns"]
        status = await world.gateway.get("/v1/status")
        self.curated_out = (status.get("traffic") or {}).get("curated_out") or {}
        self.device_bytes = await device_bytes(world)


async def device_bytes(world: World) -> dict[str, float]:
    """Record bytes the gateway received from devices, by stream, from its metrics."""
    listen = world.gateway.config.metrics
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://{listen.host}:{listen.port}/metrics") as answer,
    ):
        text = await answer.text()
    return {
        sample.labels["stream"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == DEVICE_BYTES
        for sample in family.samples
        if sample.name == f"{DEVICE_BYTES}_total"
    }


def windows(events, campaign: str) -> dict[str, tuple[int, int | None]]:
    """Per device, when its campaign started and ended (device clock, ms; None: still ran)."""
    found: dict[str, tuple[int, int | None]] = {}
    for event in sorted(events, key=lambda e: e.ts_ms):
        if event.detail.get("campaign") != campaign:
            continue
        if event.kind == "campaign_started" and event.device not in found:
            found[event.device] = (event.ts_ms, None)
        elif event.kind == "campaign_ended" and event.device in found:
            start, end = found[event.device]
            found[event.device] = (start, end if end is not None else event.ts_ms)
    return found


def recall(dataset: Path, spans: dict, args: argparse.Namespace, drifted: set[str]) -> dict:
    """The campaign's samples in the dataset against the informative inputs it could have taken."""
    db = duckdb.connect()
    data = source(dataset)
    db.execute(
        f"CREATE TABLE informative AS SELECT DISTINCT dev, boot, seq, ts_ms FROM {data} "
        "WHERE stream = 'telemetry' AND kind = 'inference' AND margin < ?",
        [args.threshold],
    )
    db.execute(
        f"CREATE TABLE samples AS SELECT dev, boot, seq, any_value(ts_ms) AS ts_ms, "
        f"any_value(margin) AS margin FROM {data} WHERE stream = 'samples' AND campaign = ? "
        "GROUP BY dev, boot, seq",
        [CAMPAIGN],
    )
    per_device = {}
    for dev, (start, end) in sorted(spans.items()):
        (count,) = db.execute(
            "SELECT count(*) FROM informative WHERE dev = ? AND ts_ms >= ? AND ts_ms <= ?",
            [dev, start, end if end is not None else 2**62],
        ).fetchone()
        per_device[dev] = count
    budgeted = sum(min(n, args.per_device) for n in per_device.values())
    expected = min(budgeted, args.total)
    kept = dict(db.execute("SELECT dev, count(*) FROM samples GROUP BY dev").fetchall())
    samples = sum(kept.values())
    (precise,) = db.execute(
        "SELECT count(*) FROM samples WHERE margin < ?", [args.threshold]
    ).fetchone()
    (with_record,) = db.execute(
        "SELECT count(*) FROM samples s WHERE EXISTS (SELECT 1 FROM informative i "
        "WHERE i.dev = s.dev AND i.ts_ms = s.ts_ms)"
    ).fetchone()
    return {
        "recall": round(samples / expected, 3) if expected else None,
        "recall_target": RECALL_TARGET,
        "recall_met": bool(expected) and samples / expected >= RECALL_TARGET,
        "samples_in_dataset": samples,
        "expected": expected,
        # The gateway ends a campaign at its total while devices still have samples in flight:
        # against the per-device budgets alone, what the devices took of what they saw.
        "recall_before_total_cap": round(samples / budgeted, 3) if budgeted else None,
        "precision": round(precise / samples, 3) if samples else None,
        "from_drifted": round(sum(kept.get(d, 0) for d in drifted) / samples, 3)
        if samples
        else None,
        "samples_with_their_inference_record": with_record,
        "devices": [
            {
                "device": dev,
                "drifted": dev in drifted,
                "window_s": round((end - start) / 1000, 1) if end is not None else None,
                "informative_in_window": n,
                "samples": kept.get(dev, 0),
            }
            for dev, n in per_device.items()
            if n or kept.get(dev)
        ],
    }


async def measure(args: argparse.Namespace, workdir: Path) -> dict:
    data = scenario(args)
    world_module.Cloud = MeteredCloud  # the world builds its cloud by this name
    runner = Observed(parse(data, "data-loop-bench", Path(".")), workdir, say=_say)
    report = await runner.run()
    world = runner.world
    drifted = {f"dev{i:03d}" for i in range(args.drifting)}
    spans = windows(world.monitor.events, CAMPAIGN)
    found = recall(Path(report["dataset"]), spans, args, drifted)
    campaign = next(c for c in runner.campaigns if c["name"] == CAMPAIGN)
    ratio = report["cloud_bytes_ratio"]
    # Samples are kept whole (checked below), so the same bytes sit on both sides of the ratio;
    # without them it is the telemetry's ratio, which a longer run approaches.
    sample_bytes = int(runner.device_bytes.get("samples", 0))
    rest = report["cloud_bytes_unfiltered"] - sample_bytes
    telemetry_ok = report["telemetry_lost"] == 0
    met = ratio is not None and ratio <= CLOUD_BYTES_TARGET
    shown = ratio if ratio is None else round(ratio, 3)
    without = (report["cloud_bytes"] - sample_bytes) / rest if rest else None
    verdicts = [
        f"cloud bytes / unfiltered: {shown}, target <= {CLOUD_BYTES_TARGET}: "
        f"{'met' if met else 'NOT met'} (without the campaign's samples on both sides: "
        f"{without if without is None else round(without, 3)})",
        f"recall of informative inputs under the budget: {found['recall']}, target >= "
        f"{RECALL_TARGET}: {'met' if found['recall_met'] else 'NOT met'}; precision "
        f"{found['precision']}; share of samples from drifted devices {found['from_drifted']}",
    ]
    if not report["passed"]:
        verdicts.append("the simulated run failed: " + "; ".join(report["violations"]))
    return {
        "verdicts": verdicts,
        "devices": args.devices,
        "drifting": args.drifting,
        "shift": args.shift,
        "rate_hz": args.rate,
        "timeline_s": report["duration_s"],
        "cloud_bytes_ratio": round(ratio, 4) if ratio is not None else None,
        "cloud_bytes_target": CLOUD_BYTES_TARGET,
        "cloud_bytes_met": met,
        "cloud_bytes": report["cloud_bytes"],
        "cloud_bytes_unfiltered": report["cloud_bytes_unfiltered"],
        "sample_bytes": sample_bytes,
        "cloud_bytes_ratio_without_samples": round(without, 4) if without is not None else None,
        "cloud_gzip_bytes": world.cloud.gzip_bytes,
        "cloud_gzip_over_cloud_bytes": round(world.cloud.gzip_bytes / report["cloud_bytes"], 3)
        if report["cloud_bytes"]
        else None,
        **{k: v for k, v in found.items() if k != "devices"},
        "campaign": {k: campaign[k] for k in CAMPAIGN_KEYS},
        "samples_captured": report["samples_captured"],
        "telemetry_sent": report["telemetry_sent"],
        "telemetry_in_cloud": report["telemetry_delivered_unique"],
        "telemetry_curated_out": report["telemetry_curated_out"],
        "telemetry_lost": report["telemetry_lost"],
        "curated_out_at_timeline_end": runner.curated_out,
        # Every sample the gateway received is in the dataset, telemetry adds up, and the
        # inference record of every sample's input is there: the ground truth is complete.
        "curation_kept_all": telemetry_ok
        and campaign["received"] == found["samples_in_dataset"]
        and found["samples_with_their_inference_record"] == found["samples_in_dataset"],
        "summaries_in_dataset": report["summaries_in_dataset"],
        "passed": report["passed"],
        "violations": report["violations"],
        "devices_in_campaign": found["devices"],
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    logs.configure("warning")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--drifting", type=int, default=3, help="the first N devices drift")
    parser.add_argument("--shift", type=float, default=-1.5, help="how far their bands dim")
    parser.add_argument("--rate", type=float, default=10.0, help="inferences/s per device")
    parser.add_argument("--seconds", type=float, default=100.0, help="timeline length")
    parser.add_argument("--threshold", type=float, default=0.2, help="margin < this is hard")
    parser.add_argument("--per-device", type=int, default=50)
    parser.add_argument("--total", type=int, default=120)
    parser.add_argument("--summary-window", type=int, default=30, help="seconds")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(measure(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="data-loop-") as tmp:
            result = asyncio.run(measure(args, Path(tmp)))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
