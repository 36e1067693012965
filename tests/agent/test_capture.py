"""Capture decisions and their bookkeeping, on a real model's outputs and a real SQLite spool:
trigger columns computed by hand, first campaign wins, per-campaign and hourly limits kept
across a reopen, the sample spool's cap, and the banded source a campaign is tested with."""

from __future__ import annotations

import asyncio
import itertools
import json
import os

import numpy as np

from agent.bad_input import BadInput
from agent.capture import Capture
from agent.capture.select import Armed, columns, select
from agent.config import CaptureConfig, SourceConfig
from agent.sources import SyntheticSource
from edgefleet.engine import Engine
from edgefleet.models import bands
from protocol.capture import Campaign, evaluate, fields_of, parse_trigger
from protocol.telemetry import Record
from protocol.topics import Command


def banded(n: int, seed: int = 3, shift: float = 0.0) -> np.ndarray:
    return bands.make(np.random.default_rng(seed), n, shift)[0]


def by_hand(scores: np.ndarray) -> tuple[list[float], list[float], list[int]]:
    margins, confidences, classes = [], [], []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda i: -row[i])
        margins.append(row[order[0]] - row[order[1]])
        confidences.append(row[order[0]])
        classes.append(order[0])
    return margins, confidences, classes


def test_trigger_columns_from_a_real_model(models):
    engine = Engine(models("kws_f32_v1"))
    samples = banded(64, shift=-1.6)
    result = engine.infer(samples)
    tree = parse_trigger("margin < 0.5 and confidence > 0.3 or class in [2] and latency_ms >= 0")
    cols = columns(
        fields_of(tree), result.scores, result.latency_us, False, np.random.default_rng()
    )
    assert set(cols) == {"margin", "confidence", "class", "latency_ms"}
    margins, confidences, classes = by_hand(result.scores)
    assert np.allclose(cols["margin"], margins) and np.allclose(cols["confidence"], confidences)
    assert cols["class"].tolist() == classes
    expected = [
        (m < 0.5 and c > 0.3) or k == 2
        for m, c, k in zip(margins, confidences, classes, strict=True)
    ]
    assert evaluate(tree, cols).tolist() == expected
    assert 0 < sum(expected) < 64, "the inputs exercise both sides of the trigger"


def test_only_the_fields_read_are_computed(models):
    engine = Engine(models("kws_f32_v1"))
    result = engine.infer(banded(8))
    cols = columns({"class"}, result.scores, result.latency_us, True, np.random.default_rng())
    assert set(cols) == {"class"}


def test_disagree_on_shadowed_inputs_only(models):
    candidate, incumbent = Engine(models("kws_f32_v2_head")), Engine(models("kws_f32_v1"))
    samples = banded(200, shift=-1.8)
    ours = candidate.infer(samples)
    mask = np.arange(200) % 2 == 0
    theirs = incumbent.infer(samples[mask])
    cols = columns({"disagree"}, ours.scores, ours.latency_us, False, None, mask, theirs.scores)
    expected = np.zeros(200, dtype=bool)
    expected[mask] = ours.scores[mask].argmax(1) != theirs.scores.argmax(1)
    assert cols["disagree"].tolist() == expected.tolist()
    assert expected.any(), "the two versions disagree somewhere on dim inputs"


def test_first_campaign_wins_and_limits_hold():
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [np.nan, 0.5], [0.52, 0.48]])
    samples = np.zeros((5, 2), np.float32)
    samples[4, 0] = np.inf  # input not finite: never taken
    cols = columns({"margin"}, scores, np.zeros(5), False, None)
    low = Campaign("low", "m", "margin < 0.3", 10)
    any_ = Campaign("any", "m", "margin >= 0", 10)
    armed = [Armed(low, low.tree, 1), Armed(any_, any_.tree, 10)]
    picks = select(armed, cols, samples, scores, hour_left=3)
    assert [(a.campaign.name, rows.tolist()) for a, rows in picks] == [
        ("low", [1]),  # rows 1 and 2 match; it has one left
        ("any", [0, 2]),  # row 1 taken by "low", 3 and 4 not finite, then the hour is full
    ]
    assert select(armed, cols, samples, scores, hour_left=0) == []


class Events:
    """Stands in for the MQTT outbox: records the events a part sends."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def event(self, kind: str, **detail) -> None:
        self.sent.append((kind, detail))

    def notify(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [k for k, _ in self.sent]


def campaign_command(name: str, trigger: str, per_device: int, cid: str = "", **extra) -> Command:
    campaign = Campaign(name, "kws", trigger, per_device, **extra)
    return Command(cid or f"c-{name}", "campaign", model="kws", settings=campaign.settings())


async def feed(capture: Capture, engine: Engine, chunks: int, shift: float = -1.6) -> int:
    """Chunks through prepare/pick/keep as the records loop does; returns the samples kept."""
    kept = 0
    for i in range(chunks):
        samples = banded(32, seed=100 + i, shift=shift)
        result = engine.infer(samples)
        plan = await capture.prepare("kws", False)
        if plan is None:
            continue
        ts = np.full(32, 1_000 + i, dtype=np.int64)
        picked = capture.pick(plan, samples, ts, result, engine.input, ("kws", 1), None)
        if picked is not None:
            await capture.keep(picked)
            kept += len(picked.bodies)
    return kept


async def settle(capture: Capture) -> None:
    """Until the commands handed over so far are handled."""
    await asyncio.gather(*capture._tasks)


def test_per_device_and_hourly_limits_survive_a_reopen(tmp_path, models):
    engine = Engine(models("kws_int8_v1"))
    config = CaptureConfig(enabled=True, max_per_hour=30)

    async def first() -> Events:
        events = Events()
        async with Capture("dev1", config, tmp_path / "s.db", events, BadInput()) as capture:
            capture.on_command(campaign_command("a", "margin < 2", 12))
            capture.on_command(campaign_command("b", "random < 1", 1000))
            await settle(capture)
            assert await feed(capture, engine, 1) == 30, "12 for a, 18 for b, then the hour is full"
            assert await feed(capture, engine, 2) == 0
            stats = capture.stats()
            assert (stats.produced, stats.depth) == (30, 30)
        return events

    events = asyncio.run(first())
    assert events.kinds() == [
        "campaign_started",
        "campaign_started",
        "campaign_ended",
    ]
    assert events.sent[2][1] == {"campaign": "a", "reason": "per_device", "captured": 12}

    async def second() -> None:
        events = Events()
        async with Capture("dev1", config, tmp_path / "s.db", events, BadInput()) as capture:
            assert [c.name for c in capture.running] == ["b"]
            assert await feed(capture, engine, 2) == 0, "the hour's 30 were counted on disk"
            capture.on_command(campaign_command("a", "margin < 2", 12, cid="again"))
            await settle(capture)
            assert events.kinds() == ["campaign_started", "campaign_ended"]
            assert events.sent[1][1]["captured"] == 12, "a campaign's count belongs to its name"
            spool = capture.spool
            claim = await spool.claim(100, 256 * 1024, 64)
            records = [Record.from_json(json.loads(b)) for b in claim.bodies]
        assert {r.body.campaign for r in records} == {"a", "b"}
        for record in records:
            tensor = record.body.input
            assert (tensor.dtype, tensor.shape) == ("int8", tuple(engine.input.shape))

    asyncio.run(second())


def test_refused_when_disabled_or_too_many(tmp_path):
    async def run() -> tuple[Events, Events]:
        off, full = Events(), Events()
        async with Capture("dev1", CaptureConfig(), tmp_path / "x.db", off, BadInput()) as c:
            c.on_command(campaign_command("a", "margin < 0.1", 5))
            await settle(c)
        config = CaptureConfig(enabled=True, max_campaigns=1)
        async with Capture("dev1", config, tmp_path / "y.db", full, BadInput()) as c:
            c.on_command(campaign_command("a", "margin < 0.1", 5))
            c.on_command(campaign_command("b", "margin < 0.1", 5))
            c.on_command(campaign_command("a", "margin < 0.2", 5, cid="replace"))
            c.on_command(Command("s", "campaign_stop", settings={"campaign": "a"}))
            c.on_command(campaign_command("b", "margin < 0.1", 5, cid="b2"))
            await settle(c)
        return off, full

    off, full = asyncio.run(run())
    assert off.sent == [
        ("campaign_refused", {"id": "c-a", "campaign": "a", "reason": "capture is disabled"})
    ]
    assert not (tmp_path / "x.db").exists(), "disabled capture keeps nothing on disk"
    assert full.kinds() == [
        "campaign_started",
        "campaign_refused",  # b: one campaign runs already
        "campaign_started",  # a replaced
        "campaign_ended",
        "campaign_started",  # b, now that a stopped
    ]
    assert full.sent[3][1]["reason"] == "stopped"


def test_sample_spool_cap_drops_oldest_and_counts(tmp_path, models):
    engine = Engine(models("kws_f32_v1"))
    config = CaptureConfig(enabled=True, spool_bytes=64 * 1024, max_per_hour=100_000)

    async def run():
        async with Capture("dev1", config, tmp_path / "s.db", Events(), BadInput()) as capture:
            capture.on_command(campaign_command("all", "margin >= 0", 100_000))
            await settle(capture)
            kept = await feed(capture, engine, 4)
            return kept, capture.stats(), await capture.spool.claim(1, 256 * 1024, 64)

    kept, stats, oldest = asyncio.run(run())
    assert kept == stats.produced == 128
    assert stats.dropped > 0 and stats.depth == 128 - stats.dropped
    assert stats.bytes <= 64 * 1024
    assert json.loads(oldest.bodies[0])["seq"] == stats.dropped, "the oldest went first"


def test_bands_margin_falls_as_shift_goes_negative(models):
    engine = Engine(models("kws_f32_v1"))
    means = {}
    for shift in (0.0, -0.5, -1.0, -1.5, -2.0):
        samples, made_from = bands.make(np.random.default_rng(11), 500, shift)
        scores = engine.infer(samples).scores
        means[shift] = float(np.mean(by_hand(scores)[0]))
        if shift == 0.0:
            assert (scores.argmax(1) == made_from).mean() > 0.95
            assert (bands.truth(samples) == made_from).all()
    print("mean margin of kws_f32_v1 by shift:", {k: round(v, 4) for k, v in means.items()})
    values = list(means.values())
    assert all(a > b for a, b in itertools.pairwise(values)), means


def test_bands_source_follows_its_shift_file(tmp_path):
    shift_file = tmp_path / "shift"
    shift_file.write_text("0.0")
    bad = BadInput()
    config = SourceConfig(pattern="bands", seed=1, shift_file=shift_file)
    source = SyntheticSource(config, bands.SHAPE, 0.0, 200, bad)

    async def brightness() -> list[float]:
        seen = []
        chunks = aiter(source)
        for text in ("0.0", "-1.5", "not a number", "1.0"):
            shift_file.write_text(text)
            os.utime(shift_file, ns=(len(seen) + 1, len(seen) + 1))
            chunk = await anext(chunks)
            made_from = bands.truth(chunk.samples)
            rows, cols = zip(*map(bands.band, made_from), strict=True)
            seen.append(
                float(
                    np.mean(
                        [s[r, c].mean() for s, r, c in zip(chunk.samples, rows, cols, strict=True)]
                    )
                )
            )
        return seen

    seen = asyncio.run(brightness())
    assert abs(seen[0] - 2.0) < 0.2 and abs(seen[1] - 0.5) < 0.2
    assert abs(seen[2] - 0.5) < 0.2, "a file that does not parse keeps the last shift"
    assert abs(seen[3] - 3.0) < 0.2
    assert bad.counts["bad_sensor"] == 1
