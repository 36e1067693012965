"""What capture costs the inference rate: the agent's pipeline in-process (real LiteRT engine,
real SQLite spools, banded synthetic inputs as fast as they come), without capture, with capture
on but no campaign, with a campaign whose trigger selects nothing, and with one that keeps
about one input in a hundred. Alternating rounds; the median rate of each is printed.

    python bench/capture_cost.py [--model kws_f32_v1] [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.bad_input import BadInput  # noqa: E402
from agent.capture import Capture  # noqa: E402
from agent.config import CaptureConfig, InferenceConfig, SourceConfig  # noqa: E402
from agent.drift import LiveDrift  # noqa: E402
from agent.engine import Engine  # noqa: E402
from agent.pipeline import ModelIdentity, Pipeline  # noqa: E402
from agent.sources import SyntheticSource  # noqa: E402
from agent.spool import Spool  # noqa: E402
from edgefleet.models import model_path  # noqa: E402
from protocol.capture import Campaign  # noqa: E402
from protocol.topics import Command  # noqa: E402

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


async def rate(model: str, trigger: str | None, seconds: float, workdir: Path) -> float:
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
        start = pipeline.stats.inferences
        await asyncio.sleep(seconds)
        done = pipeline.stats.inferences - start
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        kept = capture.stats().produced if capture.stats() else 0
    print(f"  {trigger!r:40} {done / seconds:8.0f} inferences/s, {kept} samples", flush=True)
    return done / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kws_f32_v1")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode, trigger in MODES.items():
            with tempfile.TemporaryDirectory() as tmp:
                rates[mode].append(asyncio.run(rate(args.model, trigger, args.seconds, Path(tmp))))
    base = statistics.median(rates["off"])
    for mode, found in rates.items():
        median = statistics.median(found)
        print(f"{mode:16} {median:8.0f} inferences/s  ({median / base:.3f} of off)")


if __name__ == "__main__":
    main()
