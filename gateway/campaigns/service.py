"""Campaigns inside the daemon: the operator's requests from the admin API, and a tick that asks
devices running the campaign's model to capture, ends campaigns at their total or end time, and
tells the devices it asked that a campaign ended.

A device is asked once per campaign (the command is QoS 1 to its persistent session, and the
agent keeps its campaigns across restarts); a send that fails is tried again at the next tick.
A device that refuses (capture off, too many campaigns) says so in a ``campaign_refused`` event,
which the ingest hands over with the other device messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.campaigns import store
from gateway.campaigns.store import RUNNING, CampaignError, Spec
from gateway.config import CampaignsConfig
from gateway.devices.inventory import Inventory
from gateway.store import Store
from protocol.capture import MAX_PER_DEVICE, Campaign
from protocol.topics import Command, Event, ProtocolError, Status

MAX_TOTAL = 1_000_000_000

log = structlog.get_logger()

Send = Callable[[str, Command], Awaitable[None]]


def spec_from(body: object) -> Spec:
    """An admin request body -> a checked ``Spec``, or ``CampaignError`` naming the problem."""
    if not isinstance(body, dict):
        raise CampaignError("the body is not a JSON object")
    fields = {"name": str, "model": str, "trigger": str, "per_device": int, "total": int}
    for key, kind in fields.items():
        if not isinstance(body.get(key), kind) or isinstance(body.get(key), bool):
            raise CampaignError(f"{key} is required ({kind.__name__})")
    until = body.get("until_ms")
    if until is not None and (not isinstance(until, int) or until <= time.time() * 1000):
        raise CampaignError("until_ms must be a time in the future (Unix milliseconds)")
    if not 1 <= body["total"] <= MAX_TOTAL:
        raise CampaignError(f"total must be from 1 to {MAX_TOTAL}")
    try:
        Campaign(body["name"], body["model"], body["trigger"], body["per_device"], until)
    except ProtocolError as exc:
        raise CampaignError(str(exc)) from None
    if body["per_device"] > MAX_PER_DEVICE:
        raise CampaignError(f"per_device must be at most {MAX_PER_DEVICE}")
    return Spec(
        body["name"], body["model"], body["trigger"], body["per_device"], body["total"], until
    )


class CampaignService:
    """``async with CampaignService(...)``: the tick runs until the block ends."""

    def __init__(
        self,
        config: CampaignsConfig,
        db: Store,
        inventory: Inventory,
        send: Send,
        on_failure: Callable[[BaseException], None],
    ):
        self.config, self.db, self.inventory, self.send = config, db, inventory, send
        self.on_failure = on_failure
        self._refusals: list[tuple[str, object]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- what the operator asks ------------------------------------------------------------

    async def start(self, spec: Spec) -> dict:
        async with self._lock:
            await self.db.run(store.create_sync, spec)
        log.info("campaign_started", campaign=spec.name, model=spec.model, trigger=spec.trigger)
        self._wake.set()
        return await self.view(spec.name)

    async def stop(self, name: str) -> dict:
        async with self._lock:
            await self.db.run(store.load_sync, name)
            await self.db.run(store.end_sync, name, "stopped")
        self._wake.set()
        return await self.view(name)

    async def view(self, name: str) -> dict:
        (row,) = await self.db.run(store.load_sync, name)
        return row.to_json(detail=True)

    async def listing(self) -> list[dict]:
        return [row.to_json() for row in await self.db.run(store.load_sync)]

    # -- what devices say ------------------------------------------------------------------

    def count_sync(self, conn, device: str, campaigns: Counter) -> None:
        store.count_sync(conn, device, campaigns)

    def feed(self, messages: list[Status | Event]) -> None:
        """Device messages the ingest committed: refusals are noted at the next tick."""
        for message in messages:
            if isinstance(message, Event) and message.kind == "campaign_refused":
                self._refusals.append((message.device, message.detail.get("campaign")))
                self._wake.set()

    # -- the tick --------------------------------------------------------------------------

    async def tick(self) -> None:
        async with self._lock:
            refusals, self._refusals = self._refusals, []
            for device, name in refusals:
                if isinstance(name, str):
                    with contextlib.suppress(CampaignError):
                        await self.db.run(store.load_sync, name)
                        await self.db.run(store.mark_sync, name, device, "refused")
            now_ms = time.time() * 1000
            for row in await self.db.run(store.load_sync):
                spec = row.spec
                if row.state == RUNNING:
                    if row.received >= spec.total:
                        await self._end(spec.name, "total")
                        continue
                    if spec.until_ms is not None and now_ms >= spec.until_ms:
                        await self._end(spec.name, "until")
                        continue
                    await self._ask(row)
                else:
                    await self._tell_ended(row)

    async def _end(self, name: str, reason: str) -> None:
        if await self.db.run(store.end_sync, name, reason):
            log.info("campaign_ended", campaign=name, reason=reason)
            self._wake.set()  # tell the devices at once

    async def _ask(self, row: store.Row) -> None:
        spec = row.spec
        command = Command(
            f"campaign.{spec.name}", "campaign", model=spec.model, settings=spec.campaign.settings()
        )
        for device in self.inventory.snapshot():
            if device.model != spec.model or device.device in row.devices:
                continue
            if await self._send(device.device, command):
                await self.db.run(store.mark_sync, spec.name, device.device, "sent")

    async def _tell_ended(self, row: store.Row) -> None:
        command = Command(
            f"campaign_stop.{row.spec.name}", "campaign_stop", settings={"campaign": row.spec.name}
        )
        for device, (state, _) in row.devices.items():
            if state == "sent" and await self._send(device, command):
                await self.db.run(store.mark_sync, row.spec.name, device, "stop_sent")

    async def _send(self, device: str, command: Command) -> bool:
        try:
            await self.send(device, command)
        except (ConnectionError, TimeoutError) as exc:
            log.info("campaign_command_not_sent", device=device, error=str(exc))
            return False
        return True

    async def _loop(self) -> None:
        while True:
            await self.tick()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.tick_s)

    def _done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.on_failure(task.exception())

    async def __aenter__(self) -> CampaignService:
        self._task = asyncio.create_task(self._loop(), name="campaigns")
        self._task.add_done_callback(self._done)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the admin API ---------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        def refused(exc: CampaignError) -> web.Response:
            return web.json_response({"error": str(exc)}, status=exc.status)

        async def listing(request: web.Request) -> web.Response:
            return web.json_response({"campaigns": await self.listing()})

        async def create(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "the body is not JSON"}, status=400)
            try:
                return web.json_response(await self.start(spec_from(body)), status=201)
            except CampaignError as exc:
                return refused(exc)

        async def one(request: web.Request) -> web.Response:
            try:
                return web.json_response(await self.view(request.match_info["name"]))
            except CampaignError as exc:
                return refused(exc)

        async def stop(request: web.Request) -> web.Response:
            try:
                return web.json_response(await self.stop(request.match_info["name"]))
            except CampaignError as exc:
                return refused(exc)

        return [
            web.get("/v1/campaigns", listing),
            web.post("/v1/campaigns", create),
            web.get("/v1/campaigns/{name}", one),
            web.post("/v1/campaigns/{name}/stop", stop),
        ]
