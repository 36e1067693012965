"""What capture costs the inference rate: the agent's pipeline in-process (real LiteRT engine,
real SQLite spools, banded synthetic inputs as fast as they come), without capture ("off"), with
capture on but no campaign, with a campaign whose trigger selects nothing, and with one that
keeps about one input in a hundred.

Rounds interleave the modes (each round in another order, so none always runs first or last
after a warm or a cold start), and each round's rate of a mode is divided by the same round's
"off" rate: the ratio is the median of those per-round ratios, with their spread (min-max and
interquartile range), against a target of 0.97 (capture costs at most 3 %). One LiteRT thread
and one OpenBLAS thread, as on a device; on a shared machine the spread of "off" against itself
says how large a difference the run can resolve.

    python bench/capture_cost.py [--model kws_f32_v1] [--seconds 2] [--rounds 10] [--json PATH]
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy loads: one BLAS thread, as on a device

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.bad_input import BadInput  # noqa: E402
from agent.capture import Capture  # noqa: E402
from agent.config import CaptureConfig, InferenceConfig, SourceConfig  # noqa: E402
from agent.drift import LiveDrift  # noqa: E402
from agent.pipeline import ModelIdentity, Pipeline  # noqa: E402
from agent.sources import SyntheticSource  # noqa: E402
from agent.spool import Spool  # noqa: E402
from edgefleet import logs  # noqa: E402
from edgefleet.engine import Engine  # noqa: E402
from edgefleet.models import model_path  # noqa: E402
from protocol.capture import Campaign  # noqa: E402
from protocol.topics import Command  # noqa: E402

TARGET = 0.97
MODES = {
    "off": None,
    "no campaign": "",
    "selects nothing": "margin < -1 and random < 0.5",
    "keeps ~1%": "margin < 0.5 and random < 0.01",
}


class Quiet:
    def event(self, kind: str, **detail) -> None:
        pass

    def notify(self) -> None:
        pass


@dataclass(frozen=True)
class Round:
    """One mode's window: inferences per second of wall time, and of this process's CPU time
    (all its threads), which other load on a shared machine disturbs far less."""

    rate: float
    per_cpu_s: float


async def rate(model: str, trigger: str | None, seconds: float, workdir: Path) -> Round:
    engine = Engine(model_path(model))
    drift = LiveDrift(None, 10, engine.classes, 500, 0.25, 10)
    identity = ModelIdentity("kws", 1, "0" * 64)
    config = CaptureConfig(enabled=trigger is not None, max_per_hour=1_000_000)
    async with (
        Spool(workdir / "spool.db", 1 << 30) as spool,
        Capture("dev1", config, workdir / "samples.db", Quiet(), BadInput()) as capture,
    ):
        if trigger:
            campaign = Campaign("bench", "kws", trigger, 1_000_000)
            capture.on_command(Command("b", "campaign", model="kws", settings=campaign.settings()))
            await asyncio.gather(*capture._tasks)
        pipeline = Pipeline(
            "dev1",
            engine,
            spool,
            drift,
            identity,
            InferenceConfig(),
            lambda v: None,
            lambda n: None,
            capture=capture if trigger is not None else None,
        )
        source = SyntheticSource(
            SourceConfig(pattern="bands", shift=-1.0), engine.sample_shape, 0.0, 64, BadInput()
        )
        task = asyncio.create_task(pipeline.run(source))
        await asyncio.sleep(0.5)
        start, wall, cpu = pipeline.stats.inferences, time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        done = pipeline.stats.inferences - start
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        kept = capture.stats().produced if capture.stats() else 0
    found = Round(done / wall, done / cpu)
    print(
        f"  {trigger!r:40} {found.rate:8.0f} inferences/s, {found.per_cpu_s:8.0f} per CPU "
        f"second, {kept} samples",
        file=sys.stderr,
        flush=True,
    )
    return found


def spread(values: list[float]) -> dict:
    """Median, min, max and the interquartile range of ``values``."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "iqr": (q1, q3),
    }


def measure(model: str, seconds: float, rounds: int) -> dict[str, list[Round]]:
    """Per mode, its rates in each round; round ``r`` starts at mode ``r`` (rotated order)."""
    modes = list(MODES)
    rates: dict[str, list[Round]] = {mode: [] for mode in modes}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
            with tempfile.TemporaryDirectory() as tmp:
                rates[mode].append(asyncio.run(rate(model, MODES[mode], seconds, Path(tmp))))
    return rates


def ratios(mine: list[float], base: list[float]) -> dict:
    return spread([m / b for m, b in zip(mine, base, strict=True)])


def summarise(rounds: dict[str, list[Round]], model: str, seconds: float) -> dict:
    off = rounds["off"]
    rows = []
    for mode, found in rounds.items():
        wall = ratios([r.rate for r in found], [r.rate for r in off])
        cpu = ratios([r.per_cpu_s for r in found], [r.per_cpu_s for r in off])
        rows.append(
            {
                "mode": mode,
                "trigger": MODES[mode],
                "rounds": len(found),
                "inferences_per_s": round(statistics.median(r.rate for r in found)),
                "ratio_to_off": round(wall["median"], 3),
                "ratio_min_max": f"{wall['min']:.3f}-{wall['max']:.3f}",
                "ratio_iqr": "{:.3f}-{:.3f}".format(*wall["iqr"]),
                "per_cpu_s": round(statistics.median(r.per_cpu_s for r in found)),
                "cpu_ratio_to_off": round(cpu["median"], 3),
                "cpu_ratio_iqr": "{:.3f}-{:.3f}".format(*cpu["iqr"]),
                "target": TARGET if mode != "off" else None,
                "met": wall["median"] >= TARGET if mode != "off" else None,
                "cpu_met": cpu["median"] >= TARGET if mode != "off" else None,
            }
        )
    noise = {name: spread([getattr(r, name) for r in off]) for name in ("rate", "per_cpu_s")}
    iqr = {n: (s["iqr"][1] - s["iqr"][0]) / s["median"] for n, s in noise.items()}
    measured = [r for r in rows if r["met"] is not None]
    verdicts = [
        f"{r['mode']}: {r['ratio_to_off']:.3f} of off's rate (rounds {r['ratio_min_max']}, IQR "
        f"{r['ratio_iqr']}), target >= {TARGET}: {'met' if r['met'] else 'NOT met'}; per CPU "
        f"second {r['cpu_ratio_to_off']:.3f} (IQR {r['cpu_ratio_iqr']}): "
        f"{'met' if r['cpu_met'] else 'NOT met'}"
        for r in measured
    ]
    worst = 1 - min(r["ratio_to_off"] for r in measured)
    if iqr["rate"] > max(worst, 1 - TARGET):
        verdicts.append(
            f"off's rate varies by {iqr['rate']:.1%} (IQR) between its own rounds, more than "
            f"the {1 - TARGET:.0%} to resolve: the wall-clock ratios are within this machine's "
            "noise (other processes take the cores)"
        )
        if iqr["per_cpu_s"] > 1 - TARGET:
            verdicts.append(
                f"off's inferences per CPU second vary by {iqr['per_cpu_s']:.1%} (IQR) too "
                "(cores shared with other processes: caches, sibling threads): neither figure "
                f"resolves {1 - TARGET:.0%} here; run it on a quiet machine"
            )
        else:
            verdicts.append(
                f"off's inferences per CPU second vary by {iqr['per_cpu_s']:.1%} (IQR): the "
                "CPU ratios are the figure to read"
            )
    return {
        "verdicts": verdicts,
        "model": model,
        "seconds_per_round": seconds,
        "openblas_threads": os.environ["OPENBLAS_NUM_THREADS"],
        "ratio_target": TARGET,
        # How far "off" strays from itself between rounds: a smaller cost is not resolved.
        "off_rate_iqr": round(iqr["rate"], 3),
        "off_per_cpu_s_iqr": round(iqr["per_cpu_s"], 3),
        "modes": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kws_f32_v1")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured per mode and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    logs.configure("warning")
    if args.rounds < 2:
        parser.error("--rounds: at least 2 (a spread needs two)")
    result = summarise(measure(args.model, args.seconds, args.rounds), args.model, args.seconds)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
