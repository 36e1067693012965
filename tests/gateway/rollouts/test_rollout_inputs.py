"""Who takes part in a rollout, and what the operator's input becomes, as pure functions."""

from __future__ import annotations

import pytest

from edgefleet.errors import UserError
from gateway.devices.inventory import Device
from gateway.rollouts.commands import parse_duration, parse_rate, parse_stages, parse_version
from gateway.rollouts.service import candidates, plan_from


def row(device: str, state="online", model="kws", version: int | None = 1) -> Device:
    return Device(device, 0.0, 0.0, state=state, model=model, model_version=version)


def test_candidates_are_online_devices_on_an_older_version_of_the_model():
    facts, skipped, sources = candidates(
        [
            row("a"),
            row("b", version=2),
            row("c", state="offline"),
            row("d", model="vision"),
            row("e", model="", version=None),
            row("f", version=3),
            row("g", state="unknown"),
        ],
        "kws",
        3,
    )
    assert [f.device for f in facts] == ["a", "b"]
    assert sources == {1, 2}
    assert skipped == {
        "c": "device is offline",
        "d": "runs 'vision', not 'kws'",
        "e": "no model",
        "f": "already runs version 3",
        "g": "device is unknown",
    }


def test_hardware_the_device_reported_decides_eligibility():
    from gateway.devices.inventory import apply_status
    from gateway.rollouts.decisions import eligibility
    from protocol.topics import ModelInfo, Status

    class NeedsNpu:
        hardware_tags = ("npu",)
        arena_bytes = 40_000

    reported = {
        "big": Status(
            "big",
            "online",
            1,
            model=ModelInfo("kws", 1, "0" * 64),
            hardware_tags=("npu", "pi5"),
            arena_bytes=64_000,
        ),
        "small": Status(
            "small",
            "online",
            1,
            model=ModelInfo("kws", 1, "0" * 64),
            hardware_tags=("npu",),
            arena_bytes=16_000,
        ),
        "plain": Status("plain", "online", 1, model=ModelInfo("kws", 1, "0" * 64)),
    }
    rows = [apply_status(None, Status.decode(s.encode()), now=1.0) for s in reported.values()]
    facts, _, _ = candidates(rows, "kws", 2)
    verdicts = {f.device: eligibility(f, NeedsNpu) for f in facts}
    assert verdicts == {
        "big": None,
        "small": "arena 16000 < 40000 bytes",
        "plain": "lacks hardware tags ['npu']",
    }


def test_a_plan_from_the_admin_api():
    plan = plan_from({"model": "kws", "version": 2, "stages": [1, 100], "soak_s": 30})
    assert (plan.model, plan.version, plan.stages, plan.soak_s) == ("kws", 2, (1, 100), 30.0)
    assert plan.max_failure_rate == 0.05 and not plan.auto_rollback
    assert plan.rollout_id.startswith("kws-v2-")


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"model": "kws", "stages": [100]},
        {"model": "kws", "version": True, "stages": [100]},
        {"model": "kws", "version": 99999999999999999999, "stages": [100]},
        {"model": "kws", "version": 2**31, "stages": [100]},
        {"model": "kws", "version": 0, "stages": [100]},
        {"model": "kws", "version": 2, "stages": [50, 10]},
        {"model": "kws", "version": 2, "stages": ["x"]},
        {"model": "kws", "version": 2, "stages": [100], "max_failure_rate": 2},
        {"model": "kws", "version": 2, "stages": [100], "auto_rollback": 1},
    ],
)
def test_a_bad_plan_is_refused(body):
    with pytest.raises(UserError):
        plan_from(body)


def test_cli_values():
    assert parse_stages("1,10,50,100") == [1, 10, 50, 100]
    assert [parse_duration(t) for t in ("0", "45", "30s", "10m", "1.5h")] == [0, 45, 30, 600, 5400]
    assert parse_rate("0.05") == 0.05 and parse_version("3") == 3
    for parse, text in (
        (parse_stages, "10,5,100"),
        (parse_stages, "1,50"),
        (parse_stages, "0,100"),
        (parse_stages, "a"),
        (parse_duration, "10 minutes"),
        (parse_rate, "nan"),
        (parse_rate, "-0.1"),
        (parse_version, "0"),
        (parse_version, "v2"),
    ):
        with pytest.raises(UserError):
            parse(text)
