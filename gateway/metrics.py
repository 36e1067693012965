"""Prometheus metrics of the gateway and the HTTP endpoint that serves them.

Counters that must survive a restart (records dropped by the spool) and levels that live in
other parts (spool depth, devices online) are read at scrape time by a collector, so they are
never a second copy that can disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from edgefleet import __version__
from gateway.config import Listen
from gateway.devices.inventory import Inventory
from gateway.telemetry.dead_letters import DeadLetterStats
from gateway.telemetry.spool import SpoolStats

if TYPE_CHECKING:
    from gateway.serving.renewal import Expiry

log = structlog.get_logger()
NS = "edgefleet_gateway"


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
        for d in list(self.inventory.devices.values()):
            version = "" if d.model_version is None else str(d.model_version)
            key = (d.model, version, d.state)
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            family.add_metric(list(key), count)
        yield family


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

    def watch_level(self, name: str, text: str, level: Callable[[], float]) -> None:
        """Export a level another part keeps, read at each scrape."""
        self.registry.register(_LevelCollector(f"{NS}_{name}", text, level))

    def watch_metadata(self, expiry: Callable[[], Expiry | None]) -> None:
        """Export seconds to expiry per role of the served metadata."""
        self.registry.register(_ExpiryCollector(expiry))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` on a TCP address."""

    def __init__(self, listen: Listen, metrics: Metrics):
        self.listen, self.metrics = listen, metrics
        self._runner: web.AppRunner | None = None

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
        log.info("metrics_listening", listen=str(self.listen))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
