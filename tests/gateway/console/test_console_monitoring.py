"""The fleet metrics the dashboards read, and the shipped alert rules: every metric a rule
names is one the gateway exports."""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgefleet import __version__
from gateway.campaigns import store as campaign_store
from gateway.devices.inventory import Device, Inventory
from gateway.metrics import Metrics
from gateway.rollouts.decisions import DeviceState, Plan, RolloutState
from gateway.rollouts.store import RolloutStore
from gateway.store import Store
from gateway.telemetry.dead_letters import DeadLetterStats
from gateway.telemetry.spool import SpoolStats


def parse(text: str) -> dict[str, list]:
    """Samples by family name and by sample name (``…_total`` for counters)."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        found[family.name] = list(family.samples)
        for sample in family.samples:
            if sample.name != family.name:
                found.setdefault(sample.name, []).append(sample)
    return found


def exported(inventory: Inventory, metrics: Metrics | None = None) -> dict[str, list]:
    metrics = metrics or Metrics(SpoolStats(), DeadLetterStats(), inventory)
    metrics.watch_metadata(lambda: None)
    return parse(metrics.render().decode())


def by_labels(samples: list, *keys: str) -> dict[tuple, float]:
    return {tuple(s.labels[k] for k in keys): s.value for s in samples}


def test_devices_are_counted_by_model_version_and_state():
    inventory = Inventory(store=None)
    for i, (version, state) in enumerate([(1, "online"), (1, "online"), (2, "offline")]):
        name = f"d{i}"
        inventory.devices[name] = Device(name, 0.0, 0.0, state, model="kws", model_version=version)
    inventory.devices["new"] = Device("new", 0.0, 0.0)
    samples = exported(inventory)
    devices = {
        (s.labels["model"], s.labels["version"], s.labels["state"]): s.value
        for s in samples["edgefleet_gateway_devices"]
    }
    assert devices == {
        ("kws", "1", "online"): 2, ("kws", "2", "offline"): 1, ("", "", "unknown"): 1,
    }  # fmt: skip
    (info,) = samples["edgefleet_gateway_build_info"]
    assert info.labels == {"version": __version__} and info.value == 1


def test_every_metric_an_alert_rule_names_is_exported():
    text = resources.files("gateway.console").joinpath("monitoring", "alerts.yml").read_text()
    rules = yaml.safe_load(text)["groups"][0]["rules"]
    names = set(exported(Inventory(store=None)))
    for rule in rules:
        for name in re.findall(r"\bedgefleet_gateway_[a-z_]+", rule["expr"]):
            assert name in names or name.removesuffix("_total") in names, (rule["alert"], name)


def test_drift_alarms_and_the_largest_psi_are_counted_by_model_version():
    inventory = Inventory(store=None)
    rows = [(1, True, 0.4), (1, False, 0.1), (1, True, None), (2, False, 0.05)]
    for i, (version, alarm, psi) in enumerate(rows):
        inventory.devices[f"d{i}"] = Device(
            f"d{i}", 0.0, 0.0, "online", model="kws", model_version=version,
            drift_alarm=alarm, max_psi=psi,
        )  # fmt: skip
    inventory.devices["new"] = Device("new", 0.0, 0.0)  # no model yet: no drift to speak of
    samples = exported(inventory)
    alarms = by_labels(samples["edgefleet_gateway_devices_drift_alarm"], "model", "version")
    assert alarms == {("kws", "1"): 2, ("kws", "2"): 0}
    psi = by_labels(samples["edgefleet_gateway_drift_max_psi"], "model", "version")
    assert psi == {("kws", "1"): 0.4, ("kws", "2"): 0.05}


async def test_rollouts_and_their_devices_are_copied_from_the_database(tmp_path: Path):
    """Only active rollouts have device series; the copy changes at a refresh, not before."""
    inventory = Inventory(store=None)
    metrics = Metrics(SpoolStats(), DeadLetterStats(), inventory)
    async with RolloutStore(tmp_path / "rollouts.db") as store:
        metrics.watch_rollouts(store)
        stages = {"a": 0, "b": 0, "c": 1}
        for rollout_id in ("r-run", "r-paused", "r-done"):
            await store.create(Plan(rollout_id, "kws", 2, (50, 100), 0.0, 0.5), stages, {}, 0.0)
        await store.mark("r-run", "a", DeviceState.COMMITTED, 1.0)
        await store.mark("r-run", "b", DeviceState.FAILED, 1.0, "rolled back")
        await store.set_state("r-paused", RolloutState.PAUSED, 0, "operator", 1.0)
        await store.set_state("r-done", RolloutState.COMPLETED, 1, "", 1.0)
        assert exported(inventory, metrics)["edgefleet_gateway_rollouts"][0].value == 0
        await metrics.refresh()
        samples = exported(inventory, metrics)
        await store.set_state("r-run", RolloutState.ABORTED, 0, "operator", 2.0)
        await metrics.refresh()
        after = exported(inventory, metrics)
    rollouts = by_labels(samples["edgefleet_gateway_rollouts"], "state")
    assert rollouts == {("running",): 1, ("paused",): 1, ("completed",): 1, ("aborted",): 0}
    devices = by_labels(samples["edgefleet_gateway_rollout_devices"], "rollout", "state")
    assert {k: v for k, v in devices.items() if v} == {
        ("r-run", "committed"): 1, ("r-run", "failed"): 1, ("r-run", "pending"): 1,
        ("r-paused", "pending"): 3,
    }  # fmt: skip
    assert {r for r, _ in devices} == {"r-run", "r-paused"}
    assert len(devices) == 2 * len(DeviceState)  # every state, zeros too: sums never vanish
    devices = by_labels(after["edgefleet_gateway_rollout_devices"], "rollout", "state")
    assert {r for r, _ in devices} == {"r-paused"}
    assert by_labels(after["edgefleet_gateway_rollouts"], "state")[("aborted",)] == 1


async def test_campaign_samples_are_copied_from_the_database(tmp_path: Path):
    inventory = Inventory(store=None)
    metrics = Metrics(SpoolStats(), DeadLetterStats(), inventory)
    async with Store(tmp_path / "gateway.db") as db:
        metrics.watch_campaigns(db)
        for name in ("hard", "drift", "old"):
            await db.run(
                campaign_store.create_sync, campaign_store.Spec(name, "kws", "drift", 5, 100)
            )
        await db.run(campaign_store.count_sync, "d1", Counter({"hard": 3, "old": 2}))
        await db.run(campaign_store.count_sync, "d2", Counter({"hard": 4}))
        await db.run(campaign_store.end_sync, "old", "stopped")
        await metrics.refresh()
        samples = exported(inventory, metrics)
    assert by_labels(samples["edgefleet_gateway_campaigns"], "state") == {
        ("running",): 2, ("ended",): 1,
    }  # fmt: skip
    received = by_labels(samples["edgefleet_gateway_campaign_samples_total"], "campaign")
    assert received == {("hard",): 7, ("drift",): 0}


def test_the_process_and_platform_metrics_are_exported():
    samples = exported(Inventory(store=None))
    assert samples["process_resident_memory_bytes"][0].value > 0
    assert samples["process_cpu_seconds_total"][0].value > 0
    assert samples["python_info"][0].labels["implementation"] == "CPython"
