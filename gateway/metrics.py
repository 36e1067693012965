"""Prometheus metrics of the gateway and the HTTP endpoint that serves them.

Counters that must survive a restart (records dropped by the spool) and levels that live in
other parts (spool depth, devices online) are read at scrape time by a collector, so they are
never a second copy that can disagree. Figures that live only in SQLite (rollouts, campaigns)
are copied into memory by a refresh loop next to the endpoint, every ``REFRESH_S``: a scrape
never waits for the database, and the database is read at that pace however often Prometheus
scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from edgefleet import __version__
from gateway.campaigns import store as campaign_store
from gateway.config import Listen
from gateway.devices.inventory import Inventory
from gateway.rollouts.decisions import DeviceState, RolloutState
from gateway.telemetry.dead_letters import DeadLetterStats
from gateway.telemetry.spool import SpoolStats

if TYPE_CHECKING:
    from gateway.rollouts.store import RolloutStore
    from gateway.serving.renewal import Expiry
    from gateway.store import Store

log = structlog.get_logger()
NS = "edgefleet_gateway"
REFRESH_S = 5.0  # how stale a rollout or campaign figure may be; a scrape is every 15 s or more
ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED)


class _StateCollector:
    def __init__(self, stats: SpoolStats, dead: DeadLetterStats, online: Callable[[], int]):
        self.stats, self.dead, self.online = stats, dead, online

    def collect(self):
        stats = self.stats
        yield GaugeMetricFamily(
            f"{NS}_spool_records", "Records waiting in the spool", stats.records
        )
        yield GaugeMetricFamily(f"{NS}_spool_bytes", "Record bytes in the spool", stats.bytes)
        yield CounterMetricFamily(
            f"{NS}_spool_dropped_records", "Records dropped by the spool cap, ever", stats.dropped
        )
        yield GaugeMetricFamily(
            f"{NS}_devices_online", "Devices whose status is online", self.online()
        )
        dead = self.dead
        yield GaugeMetricFamily(f"{NS}_dead_letters", "Dead letters kept", dead.entries)
        yield GaugeMetricFamily(
            f"{NS}_dead_letter_records", "Records kept in dead letters", dead.records
        )
        yield GaugeMetricFamily(f"{NS}_dead_letter_bytes", "Bytes of dead letters", dead.bytes)
        yield CounterMetricFamily(
            f"{NS}_dead_letters_dropped", "Dead letters dropped by the cap, ever", dead.dropped
        )
        yield CounterMetricFamily(
            f"{NS}_dead_letters_dropped_records",
            "Records in dead letters dropped by the cap, ever",
            dead.dropped_records,
        )
        yield CounterMetricFamily(
            f"{NS}_uplink_refused_records",
            "Records the cloud refused for good and were set aside as dead letters, ever",
            dead.set_aside_records,
        )


class _FleetCollector:
    """The build and the fleet's model-version mix, read from the inventory at each scrape (a
    dashboard's version bar and a rollout's progress without asking the admin API)."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory

    def collect(self):
        info = GaugeMetricFamily(f"{NS}_build_info", "The gateway's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        family = GaugeMetricFamily(
            f"{NS}_devices",
            "Devices by model, model version and status state",
            labels=["model", "version", "state"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        devices = list(self.inventory.devices.values())
        for d in devices:
            version = "" if d.model_version is None else str(d.model_version)
            key = (d.model, version, d.state)
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            family.add_metric(list(key), count)
        yield family
        yield from _drift(devices)


def _drift(devices: list) -> list[GaugeMetricFamily]:
    """Drift alarms and the largest PSI by model version, as each device last reported them
    (the console's fleet page counts the same alarms). Every version in the fleet has an alarm
    count, zero included, so a sum over them is 0 rather than empty."""
    alarms = GaugeMetricFamily(
        f"{NS}_devices_drift_alarm",
        "Devices whose last status or event shows a drift alarm, by model and model version",
        labels=["model", "version"],
    )
    psi = GaugeMetricFamily(
        f"{NS}_drift_max_psi",
        "Largest PSI the devices of a model version last reported",
        labels=["model", "version"],
    )
    counts: dict[tuple[str, str], int] = {}
    largest: dict[tuple[str, str], float] = {}
    for d in devices:
        if not d.model:
            continue
        key = (d.model, "" if d.model_version is None else str(d.model_version))
        counts[key] = counts.get(key, 0) + d.drift_alarm
        if d.max_psi is not None:
            largest[key] = max(largest.get(key, 0.0), d.max_psi)
    for key, count in sorted(counts.items()):
        alarms.add_metric(list(key), count)
    for key, value in sorted(largest.items()):
        psi.add_metric(list(key), value)
    return [alarms, psi]


class _RolloutCollector:
    """Rollouts by state, and the devices of the running and paused ones by their state: a
    copy of the rollouts' database, taken by ``refresh``."""

    def __init__(self, store: RolloutStore):
        self.store = store
        self.rollouts: Tally[str] = Tally()
        self.devices: dict[str, Tally[str]] = {}

    async def refresh(self) -> None:
        rollouts = await self.store.list()
        devices = {}
        for rollout in rollouts:
            if rollout.state in ACTIVE:
                progress = await self.store.progress(rollout.plan.rollout_id)
                devices[rollout.plan.rollout_id] = Tally(p.state.value for p in progress)
        self.rollouts = Tally(r.state.value for r in rollouts)
        self.devices = devices

    def collect(self):
        rollouts = GaugeMetricFamily(f"{NS}_rollouts", "Rollouts by state", labels=["state"])
        for state in RolloutState:
            rollouts.add_metric([state.value], self.rollouts[state.value])
        yield rollouts
        devices = GaugeMetricFamily(
            f"{NS}_rollout_devices",
            "Devices of each running or paused rollout by their state in it",
            labels=["rollout", "state"],
        )
        for rollout, states in sorted(self.devices.items()):
            for state in DeviceState:
                devices.add_metric([rollout, state.value], states[state.value])
        yield devices


class _CampaignCollector:
    """Campaigns by state and the samples each running one received: a copy of the campaigns'
    table, taken by ``refresh``. An ended campaign keeps its count in the table, not here, so
    the series stay as few as the campaigns that run."""

    def __init__(self, db: Store):
        self.db = db
        self.campaigns: Tally[str] = Tally()
        self.received: dict[str, int] = {}

    async def refresh(self) -> None:
        rows = await self.db.run(campaign_store.load_sync)
        self.campaigns = Tally(row.state for row in rows)
        self.received = {
            row.spec.name: row.received for row in rows if row.state == campaign_store.RUNNING
        }

    def collect(self):
        campaigns = GaugeMetricFamily(f"{NS}_campaigns", "Campaigns by state", labels=["state"])
        for state in (campaign_store.RUNNING, campaign_store.ENDED):
            campaigns.add_metric([state], self.campaigns[state])
        yield campaigns
        samples = CounterMetricFamily(
            f"{NS}_campaign_samples",
            "Samples received for each running campaign",
            labels=["campaign"],
        )
        for name, received in sorted(self.received.items()):
            samples.add_metric([name], received)
        yield samples


class _LevelCollector:
    def __init__(self, name: str, text: str, level: Callable[[], float]):
        self.name, self.text, self.level = name, text, level

    def collect(self):
        yield GaugeMetricFamily(self.name, self.text, self.level())


class _ExpiryCollector:
    def __init__(self, expiry: Callable[[], Expiry | None]):
        self.expiry = expiry

    def collect(self):
        family = GaugeMetricFamily(
            f"{NS}_metadata_expires_seconds",
            "Seconds until the served metadata of a role expires (negative: expired)",
            labels=["role"],
        )
        expiry = self.expiry()
        for role in expiry.expires if expiry else ():
            family.add_metric([role], expiry.seconds_left(role))
        yield family


class Metrics:
    def __init__(self, stats: SpoolStats, dead: DeadLetterStats, inventory: Inventory):
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(f"{NS}_ingest_messages", "MQTT messages", ["kind"], registry=r)
        self.records = Counter(f"{NS}_ingest_records", "Telemetry records spooled", registry=r)
        self.malformed = Counter(
            f"{NS}_ingest_malformed",
            "Messages refused as malformed, kept as dead letters",
            ["kind", "reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            f"{NS}_ingest_commit_seconds",
            "Time to make a message group durable",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.connected = Gauge(
            f"{NS}_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.uploaded_batches = Counter(f"{NS}_uplink_batches", "Batches confirmed", registry=r)
        self.uploaded_records = Counter(f"{NS}_uplink_records", "Records confirmed", registry=r)
        self.upload_seconds = Histogram(
            f"{NS}_uplink_seconds",
            "Time from sending a batch to its 2xx",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.upload_failures = Counter(
            f"{NS}_uplink_failures", "Failed upload attempts", ["reason"], registry=r
        )
        self.refusals = Counter(
            f"{NS}_uplink_refusals",
            "Batches or parts of batches the cloud refused for good",
            ["status"],
            registry=r,
        )
        self.device_bytes = Counter(
            f"{NS}_device_record_bytes",
            "Record bytes received from devices, before curation",
            ["stream"],
            registry=r,
        )
        self.curated = Counter(
            f"{NS}_curation_dropped_records",
            "Records a curation rule (or the default) kept from the cloud",
            ["stream", "rule"],
            registry=r,
        )
        self.cloud_bytes = Counter(
            f"{NS}_cloud_record_bytes",
            "Record bytes the cloud confirmed (uncompressed NDJSON)",
            registry=r,
        )
        self.splits = Counter(
            f"{NS}_uplink_splits", "Batches halved after a 413 from the cloud", registry=r
        )
        r.register(_StateCollector(stats, dead, inventory.online))
        r.register(_FleetCollector(inventory))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.refreshes: list[Callable[[], Awaitable[None]]] = []

    def watch_level(self, name: str, text: str, level: Callable[[], float]) -> None:
        """Export a level another part keeps, read at each scrape."""
        self.registry.register(_LevelCollector(f"{NS}_{name}", text, level))

    def watch_metadata(self, expiry: Callable[[], Expiry | None]) -> None:
        """Export seconds to expiry per role of the served metadata."""
        self.registry.register(_ExpiryCollector(expiry))

    def watch_rollouts(self, store: RolloutStore) -> None:
        """Export rollouts by state and the device states of the active ones."""
        self._watch_copy(_RolloutCollector(store))

    def watch_campaigns(self, db: Store) -> None:
        """Export campaigns by state and the samples of the running ones."""
        self._watch_copy(_CampaignCollector(db))

    def _watch_copy(self, collector: _RolloutCollector | _CampaignCollector) -> None:
        self.registry.register(collector)
        self.refreshes.append(collector.refresh)

    async def refresh(self) -> None:
        """Copy the figures that live in a database; one that cannot be read keeps its last
        copy (the part that owns the database reports its failure)."""
        for refresh in self.refreshes:
            try:
                await refresh()
            except Exception as exc:  # noqa: BLE001 - a metric never stops the gateway
                log.warning("metrics_refresh_failed", error=repr(exc))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` on a TCP address, and the loop that refreshes the copied figures."""

    def __init__(self, listen: Listen, metrics: Metrics, refresh_s: float = REFRESH_S):
        self.listen, self.metrics, self.refresh_s = listen, metrics, refresh_s
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task | None = None

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.metrics.refresh()

    async def _handle(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def __aenter__(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port)
        await site.start()
        await self.metrics.refresh()  # the first scrape already has every figure
        self._refresher = asyncio.create_task(self._refresh(), name="metrics-refresh")
        log.info("metrics_listening", listen=str(self.listen))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
