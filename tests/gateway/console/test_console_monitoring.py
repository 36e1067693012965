"""The fleet metrics the dashboards read, the shipped alert rules and the shipped Grafana
dashboard: every metric a rule or a panel names is one the gateway exports, the dashboard's
against a live gateway with a rollout, a campaign and a drifting device."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter
from importlib import resources
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgefleet import __version__
from firmware_sim.broker import free_port
from gateway.campaigns import store as campaign_store
from gateway.devices.inventory import Device, Inventory
from gateway.metrics import Metrics
from gateway.rollouts.decisions import DeviceState, Plan, RolloutState
from gateway.rollouts.store import RolloutStore
from gateway.store import Store
from gateway.telemetry.dead_letters import DeadLetterStats
from gateway.telemetry.spool import SpoolStats
from protocol.telemetry import Record, RecordId, Sample, Tensor, encode_batch
from protocol.topics import DriftInfo, ModelInfo, Status, device_topic
from tests.gateway.rollouts.rollout_support import (
    Fleet,
    cli,
    cli_json,
    import_release,
    operator_repository,
    wait_inventory,
)
from tests.gateway.support import PREFIX, wait_for

# PromQL words that are not metric names (functions are told by the parenthesis after them).
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


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
    text = monitoring_file("alerts.yml")
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


def monitoring_file(name: str) -> str:
    return resources.files("gateway.console").joinpath("monitoring", name).read_text()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: strings, label matchers, ranges and grouping
    clauses removed, then every identifier that is not a function call or a keyword."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w$.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", expr)
    return {n for n in names if n not in PROMQL_WORDS}


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
        assert found, variable["definition"]
        queries.append((f"${variable['name']}", found[1]))
    return queries


def test_metric_names_are_found_in_promql():
    expr = 'sum by (a) (rate(x_total{b="c", d=~"$e"}[5m])) / on(f) group_left y and z > 0.5'
    assert metric_names(expr) == {"x_total", "y", "z"}
    assert metric_names("sum(increase(a[$__range])) / sum(b)") == {"a", "b"}


def test_the_dashboard_is_a_grafana_dashboard_to_import():
    dashboard = json.loads(monitoring_file("grafana-dashboard.json"))
    (source,) = dashboard["__inputs"]
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    uid = "${" + source["name"] + "}"
    assert dashboard["id"] is None and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    kinds = Counter(panel["type"] for panel in dashboard["panels"])
    assert kinds["stat"] >= 3 and kinds["timeseries"] >= 5 and kinds["table"] >= 1
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["refId"], panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Devices online", "Bytes to the cloud", "Dead letters", "Ingest rate",
            "Uplink failures", "Drift alarms", "Rollout device states", "Campaign samples",
            "Devices by model version"} <= titles  # fmt: skip


class DriftingDevice:
    """A device on vision v1 whose retained status shows a drift alarm, and which sends the
    samples of a campaign."""

    def __init__(self, broker, name: str):
        self.name = name
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.username_pw_set(*broker.login(name))
        self.client.connect("127.0.0.1", broker.config.port)
        self.client.loop_start()
        drift = DriftInfo(window=200, max_psi=0.42, alarm=True, compared=True)
        model = ModelInfo("vision", 1, "1" * 64)
        status = Status(name, "online", int(time.time() * 1000), model=model, drift=drift)
        self.publish("status", status.encode(), retain=True)

    def publish(self, kind: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(device_topic(PREFIX, self.name, kind), payload, 1, retain)
        info.wait_for_publish(10)

    def send_samples(self, campaign: str, count: int) -> None:
        body = Sample(
            "vision", 1, campaign, "drift", (0.5, 0.5), False, Tensor("int8", (8,), bytes(8))
        )
        records = [
            Record(RecordId(self.name, "cd" * 8, seq), 1_700_000_000_000 + seq, body).encode()
            for seq in range(count)
        ]
        self.publish("samples", encode_batch(self.name, records))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return parse(answer.read().decode())


def test_every_metric_the_dashboard_reads_is_exported_by_a_live_gateway(
    broker, make_gateway, tmp_path
):
    operator = operator_repository(tmp_path / "operator", versions=(1, 2))
    gateway = make_gateway(
        broker,
        None,
        repository={
            "dir": tmp_path / "gw" / "served",
            "keys": operator.keys.online,
            "listen": f"127.0.0.1:{free_port()}",
        },
        rollouts={"tick_s": 0.2, "reoffer_s": 30},
        campaigns={"tick_s": 0.2},
    )
    import_release(gateway, operator)
    fleet = Fleet(broker, 2)
    drifting = DriftingDevice(broker, "drifting")
    try:
        wait_inventory(gateway.config_path, 3)
        rollout = cli_json(
            gateway.config_path, "rollout", "start", "--model", "kws", "--version", "2",
            "--stages", "50,100", "--soak", "3600",
        )["id"]  # fmt: skip
        started = cli(
            gateway.config_path, "campaign", "start", "hard", "--model", "vision",
            "--trigger", "drift", "--per-device", "5", "--total", "100",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        drifting.send_samples("hard", 3)

        def settled() -> dict[str, list] | None:
            found = scrape(gateway.metrics_url)
            states = by_labels(found["edgefleet_gateway_rollout_devices"], "rollout", "state")
            samples = found.get("edgefleet_gateway_campaign_samples_total", [])
            received = by_labels(samples, "campaign").get(("hard",))
            return found if states.get((rollout, "committed")) == 1 and received == 3 else None

        found = wait_for(settled, 30, "the rollout and campaign figures")
    finally:
        drifting.close()
        fleet.close()
    states = by_labels(found["edgefleet_gateway_rollout_devices"], "rollout", "state")
    assert states[(rollout, "pending")] == 1  # the second stage waits for the soak
    assert by_labels(found["edgefleet_gateway_rollouts"], "state")[("running",)] == 1
    assert by_labels(found["edgefleet_gateway_campaigns"], "state")[("running",)] == 1
    alarms = by_labels(found["edgefleet_gateway_devices_drift_alarm"], "model", "version")
    assert alarms == {("kws", "1"): 0, ("kws", "2"): 0, ("vision", "1"): 1}
    psi = by_labels(found["edgefleet_gateway_drift_max_psi"], "model", "version")
    assert psi == {("vision", "1"): 0.42}
    assert found["process_resident_memory_bytes"][0].value > 10_000_000

    dashboard = json.loads(monitoring_file("grafana-dashboard.json"))
    for where, expr in dashboard_queries(dashboard):
        names = metric_names(expr)
        assert names, (where, expr)
        for name in names:  # a labelled counter with no child yet has its family only
            assert name in found or name.removesuffix("_total") in found, (where, name)
