"""The gateway daemon: its parts composed as async context managers on one ``AsyncExitStack``.

Start order is dependency order (database, spool and inventory, sink, uplink, curation (with a
``[curation]`` section), the command publisher and the campaigns, then with a ``[repository]``
section the served repository and the rollouts, then ingest, metrics, the admin API with the
operator console, and the console's own TCP listener when configured); the stack
stops them in reverse, so the broker connection closes before the uplink and the database last.
SIGTERM or SIGINT ends the daemon cleanly with exit code 0; a part that fails ends it with exit
code 1, and nothing unacknowledged or unconfirmed is lost either way. Under systemd it reports
READY once every part runs, pings the watchdog from the
event loop, and reports STOPPING.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack

import structlog

from edgefleet.open_files import raise_open_files_limit
from edgefleet.sdnotify import Notifier, watchdog
from gateway import admin_token
from gateway.admin import AdminServer, core_routes, status_source
from gateway.campaigns.service import CampaignService
from gateway.config import GatewayConfig
from gateway.console.app import Console
from gateway.console.backend import AdminCalls, ConsoleData, served_releases
from gateway.console.server import ConsoleServer
from gateway.devices.command_publisher import CommandPublisher
from gateway.devices.inventory import Inventory
from gateway.metrics import Metrics, MetricsServer
from gateway.rollouts.service import RolloutService
from gateway.serving.renewal import Expiry
from gateway.serving.service import RepositoryService
from gateway.store import Store, counter
from gateway.telemetry import dead_letter_api
from gateway.telemetry.curation import dropped_sync
from gateway.telemetry.curation_stage import CurationStage
from gateway.telemetry.dead_letters import DeadLetters
from gateway.telemetry.ingest import DEVICE_BYTES, Ingest
from gateway.telemetry.sinks import make_sink
from gateway.telemetry.spool import CLOUD_BYTES, UplinkSpool
from gateway.telemetry.uplink import Uplink
from protocol.topics import Event, Status

log = structlog.get_logger()


def traffic_sync(conn) -> dict:
    """Record bytes devices sent against record bytes the cloud confirmed, since the start of
    this database (uncompressed NDJSON both ways, so curation's saving shows directly)."""
    received, delivered = counter(conn, DEVICE_BYTES), counter(conn, CLOUD_BYTES)
    return {
        "device_bytes": received,
        "cloud_bytes": delivered,
        "ratio": round(delivered / received, 6) if received else None,
        "curated_out": dropped_sync(conn),
    }


class Stopper:
    """One place that ends the daemon: a signal or the first failed part."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.failure: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        log.error("gateway_part_failed", error=repr(exc), exc_info=exc)
        self.failure = self.failure or exc
        self.event.set()


async def run(config: GatewayConfig) -> int:
    stopper = Stopper()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopper.event.set)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    token = admin_token.ensure(config.admin.token_file)  # a weak token stops the start here
    viewer = admin_token.ensure(config.admin.viewer_token_file, "viewer token")
    open_files = raise_open_files_limit()
    notifier = Notifier()
    async with AsyncExitStack() as stack:
        stack.callback(notifier.close)
        store = await stack.enter_async_context(Store(config.database))
        spool = await UplinkSpool(store, config.spool.max_bytes).open()
        limits = config.dead_letters
        dead_letters = await store.run(DeadLetters(limits.max_entries, limits.max_bytes).load_sync)
        inventory = await Inventory(store).open()
        metrics = Metrics(spool.stats, dead_letters.stats, inventory)
        sink = await stack.enter_async_context(make_sink(config.uplink, config.site))
        uplink = await stack.enter_async_context(
            Uplink(config.uplink, spool, sink, dead_letters, metrics, stopper.fail)
        )
        repository: RepositoryService | None = None

        def metadata_expiry() -> Expiry | None:
            return repository.expiry() if repository else None

        metrics.watch_metadata(metadata_expiry)

        async def traffic() -> dict:
            return await store.run(traffic_sync)

        status = status_source(config.site, inventory, spool.stats, metadata_expiry, traffic)
        routes = core_routes(inventory, status)
        routes += dead_letter_api.routes(store, dead_letters, spool, uplink.changed.set)
        curation = None
        if config.curation is not None:
            curation = await stack.enter_async_context(
                CurationStage(config.curation, store, spool, uplink.changed.set, stopper.fail)
            )
            routes += curation.routes()
        publisher = await stack.enter_async_context(
            CommandPublisher(config.mqtt, config.rollouts.send_timeout_s)
        )
        campaigns = await stack.enter_async_context(
            CampaignService(config.campaigns, store, inventory, publisher.send, stopper.fail)
        )
        routes += campaigns.routes()
        metrics.watch_campaigns(store)
        feeds: list[Callable[[list[Status | Event]], None]] = [campaigns.feed]
        rollouts = None
        if config.repository is not None:
            repository = await stack.enter_async_context(RepositoryService(config.repository))
            rollouts = await stack.enter_async_context(
                RolloutService(config.rollouts, repository, publisher.send, inventory, stopper.fail)
            )
            routes += repository.routes() + rollouts.routes()
            feeds.append(rollouts.feed)
            metrics.watch_rollouts(rollouts.store)
            metrics.watch_level(
                "rollout_devices_blocked",
                "Devices of running rollouts that cannot fetch or verify the update yet",
                lambda: rollouts.controller.blocked,
            )
        await stack.enter_async_context(
            Ingest(
                config.mqtt,
                config.ingest,
                store,
                spool,
                dead_letters,
                inventory,
                metrics,
                uplink.changed.set,
                stopper.fail,
                lambda messages: [feed(messages) for feed in feeds],
                curation,
                campaigns,
            )
        )
        if config.metrics is not None:
            await stack.enter_async_context(MetricsServer(config.metrics, metrics))
        admin_calls = await stack.enter_async_context(AdminCalls(config.admin.listen, token))
        console = Console(
            config.site,
            ConsoleData(
                inventory,
                status,
                lambda: dead_letters.stats,
                served_releases(repository) if repository is not None else None,
                admin_calls,
            ),
            token,
            viewer,
        )
        await stack.enter_async_context(AdminServer(config.admin, token, routes, console))
        if config.admin.console_listen is not None:
            await stack.enter_async_context(ConsoleServer(config.admin.console_listen, console))
        log.info(
            "gateway_running",
            site=config.site,
            spool_records=spool.stats.records,
            devices=len(inventory.devices),
            open_files=open_files,
        )

        def status() -> str:
            return f"{inventory.online()} devices online, spool {spool.stats.records} records"

        notifier.send(READY="1", STATUS=status())
        pinger = asyncio.create_task(watchdog(notifier, status), name="watchdog")
        await stopper.event.wait()
        pinger.cancel()
        notifier.send(STOPPING="1", STATUS="stopping")
        log.info("gateway_stopping")
    return 1 if stopper.failure else 0
