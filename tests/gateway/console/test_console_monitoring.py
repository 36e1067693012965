"""The fleet metrics the dashboards read, and the shipped alert rules: every metric a rule
names is one the gateway exports."""

from __future__ import annotations

import re
from importlib import resources

import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgefleet import __version__
from gateway.devices.inventory import Device, Inventory
from gateway.metrics import Metrics
from gateway.telemetry.dead_letters import DeadLetterStats
from gateway.telemetry.spool import SpoolStats


def exported(inventory: Inventory) -> dict[str, list]:
    """Samples by family name and by sample name (``…_total`` for counters)."""
    metrics = Metrics(SpoolStats(), DeadLetterStats(), inventory)
    metrics.watch_metadata(lambda: None)
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        found[family.name] = list(family.samples)
        for sample in family.samples:
            if sample.name != family.name:
                found.setdefault(sample.name, []).append(sample)
    return found


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
