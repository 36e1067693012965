"""Rollouts inside the daemon: the controller's tick loop, the devices' verdicts from the ingest,
and the operator's commands from the admin API.

Every controller call runs under one lock, so a verdict is never recorded between a command's
PUBACK and the controller noting that it offered. The ingest only hands over the status and
event messages it has committed (``feed`` queues them without waiting), so telemetry throughput
does not depend on rollouts. Before a rollout starts, the deltas its devices need (from the
version each runs to the target) are signed, because devices ask for a delta first.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterable

import structlog
from aiohttp import web

from edgefleet.errors import UserError
from gateway.config import RolloutsConfig
from gateway.devices.inventory import Device, Inventory
from gateway.releases.repository import McuImage
from gateway.rollouts.controller import (
    BLOCKED_EVENTS,
    FAILURE_EVENTS,
    RolloutConflict,
    RolloutController,
    RolloutError,
    Send,
    UnknownRollout,
    shown_commits,
)
from gateway.rollouts.decisions import DeviceFacts, DeviceState, Plan, Progress, stage_table
from gateway.rollouts.store import Rollout, RolloutStore
from gateway.serving.service import RepositoryService
from protocol.mcu_image import parse_version
from protocol.model_meta import MAX_VERSION, ModelMeta
from protocol.topics import Event, Status

log = structlog.get_logger()

VERDICT_EVENTS = ("update_committed", *FAILURE_EVENTS)
WAKE_GATHER_S = 0.05  # after a verdict, how long the tick waits for the verdicts that follow
PACE_STEP_S = 0.1  # paced offers go in slices this far apart, not one tick per offer


def candidates(
    devices: Iterable[Device], model: str, version: int
) -> tuple[list[DeviceFacts], dict[str, str], set[int]]:
    """Devices that could take ``model`` ``version``, those left out and why, and the versions
    the candidates run now (the sources of the deltas to build). Hardware tags and arena size
    are what the device reported in its status."""
    facts: list[DeviceFacts] = []
    skipped: dict[str, str] = {}
    sources: set[int] = set()
    for row in devices:
        if row.state != "online":
            skipped[row.device] = f"device is {row.state}"
        elif row.model != model:
            skipped[row.device] = f"runs {row.model!r}, not {model!r}" if row.model else "no model"
        elif row.model_version is not None and row.model_version >= version:
            skipped[row.device] = f"already runs version {row.model_version}"
        else:
            facts.append(DeviceFacts(row.device, frozenset(row.hardware_tags), row.arena_bytes))
            if row.model_version:
                sources.add(row.model_version)
    return facts, skipped, sources


def mcu_candidates(
    devices: Iterable[Device], name: str, image_version: str
) -> tuple[list[DeviceFacts], dict[str, str]]:
    """Devices with an MCU tracking the image ``name`` that keeps an older image (or none
    known yet), and those left out and why. Versions are the MCUboot header's, as the MCU
    reported them in the device's status."""
    facts: list[DeviceFacts] = []
    skipped: dict[str, str] = {}
    wanted = parse_version(image_version)
    for row in devices:
        mcu = next((m for m in row.mcus if m.get("name") == name), None)
        if row.state != "online":
            skipped[row.device] = f"device is {row.state}"
        elif mcu is None:
            skipped[row.device] = f"has no MCU {name!r}"
        elif mcu.get("state") == "unreachable":
            skipped[row.device] = f"MCU {name!r} is unreachable"
        elif mcu.get("version") and parse_version(mcu["version"]) >= wanted:
            skipped[row.device] = f"MCU {name!r} already keeps {mcu['version']}"
        else:
            facts.append(DeviceFacts(row.device))
    return facts, skipped


def last_verdict(row: Device) -> Event | None:
    """The failure or block the inventory remembers as the device's last event, as the event
    that carried it (the commits its state shows are replayed by ``shown_commits``)."""
    if not row.last_rollout or row.last_event not in (*FAILURE_EVENTS, *BLOCKED_EVENTS):
        return None
    detail = {"rollout": row.last_rollout, "reason": row.last_reason or row.last_event}
    return Event(row.device, 0, row.last_event, detail)


def evaluation_refusal(meta: ModelMeta) -> str | None:
    """Why a release may not be rolled out for its signed evaluation, or None: one signed
    below its minimum accuracy (``--sign-below-minimum``) is for experiments only."""
    ref = meta.evaluation
    if ref is None or ref.passed:
        return None
    return (
        f"{meta.name} version {meta.version} was signed below its minimum accuracy "
        f"({ref.accuracy:.3f} on {ref.count} labelled inputs, minimum {ref.min_accuracy:g}): "
        "it is not rolled out"
    )


def http_status(exc: Exception) -> int:
    """The admin API's answer to a refused rollout request."""
    if isinstance(exc, UnknownRollout):
        return 404
    if isinstance(exc, RolloutConflict):
        return 409
    return 400  # UserError: the request itself is wrong


def summary(rollout: Rollout, progress: list[Progress]) -> dict:
    plan = rollout.plan
    return {
        "id": plan.rollout_id,
        "model": plan.model,
        "version": plan.version,
        "state": rollout.state.value,
        "stage": rollout.stage,
        "reason": rollout.reason,
        "created_at": rollout.created_at,
        "updated_at": rollout.updated_at,
        "devices": len(progress),
        "committed": sum(p.state == DeviceState.COMMITTED for p in progress),
        "failed": sum(p.state == DeviceState.FAILED for p in progress),
        "blocked": sum(p.state == DeviceState.BLOCKED for p in progress),
    }


def detail(rollout: Rollout, progress: list[Progress], skipped: dict[str, str]) -> dict:
    plan = rollout.plan
    return summary(rollout, progress) | {
        "plan": {
            "stages": list(plan.stages),
            "soak_s": plan.soak_s,
            "max_failure_rate": plan.max_failure_rate,
            "auto_rollback": plan.auto_rollback,
            "blocked_deadline_s": plan.blocked_deadline_s,
        },
        "stages": stage_table(plan, progress),
        "progress": [
            {
                "device": p.device,
                "stage": p.stage,
                "state": p.state.value,
                "detail": p.detail,
                "offered_at": p.offered_at,
                "committed_at": p.committed_at,
                "blocked_since": p.blocked_since,
            }
            for p in sorted(progress, key=lambda p: (p.stage, p.device))
        ],
        "skipped": [{"device": d, "reason": r} for d, r in sorted(skipped.items())],
    }


def plan_from(body: object) -> Plan:
    """The JSON of ``POST /v1/rollouts`` -> a checked plan (``UserError`` says what is wrong)."""
    if not isinstance(body, dict):
        raise UserError("the body must be a JSON object")

    def field(key: str, kind: type | tuple, default=...):
        value = body.get(key, default)
        if value is ... or not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise UserError(f"{key} is missing or has the wrong type")
        return value

    model, version = field("model", str), field("version", int)
    if not 1 <= version <= MAX_VERSION:
        raise UserError(f"version must be from 1 to {MAX_VERSION}")
    stages = field("stages", list)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in stages):
        raise UserError("stages must be whole percentages")
    rollout_id = f"{model[:32]}-v{version}-{secrets.token_hex(3)}"  # command ids: <= 128
    try:
        return Plan(
            rollout_id=rollout_id,
            model=model,
            version=version,
            stages=tuple(stages),
            soak_s=float(field("soak_s", (int, float), 0)),
            max_failure_rate=float(field("max_failure_rate", (int, float), 0.05)),
            auto_rollback=field("auto_rollback", bool, False),
            blocked_deadline_s=float(field("blocked_deadline_s", (int, float), 3600)),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


class RolloutService:
    def __init__(
        self,
        config: RolloutsConfig,
        repository: RepositoryService,
        send: Send,
        inventory: Inventory,
        on_failure: Callable[[BaseException], None],
    ):
        self.config, self.repository, self.inventory = config, repository, inventory
        self.send, self.on_failure = send, on_failure
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()  # a verdict or a new rollout: tick now, not at the next
        self._inbox: asyncio.Queue[list[Status | Event]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._stack = contextlib.AsyncExitStack()
        self.store: RolloutStore | None = None
        self.controller: RolloutController | None = None

    def feed(self, messages: list[Status | Event]) -> None:
        """Called by the ingest after the commit that stored these messages."""
        self._inbox.put_nowait(messages)

    async def _apply(self) -> None:
        while True:
            messages = await self._inbox.get()
            async with self._lock:
                for message in messages:
                    if isinstance(message, Event):
                        await self.controller.on_event(message)
                        if message.kind in VERDICT_EVENTS:
                            self._wake.set()
                    else:
                        await self.controller.on_status(message)

    async def _tick(self) -> None:
        """Every ``tick_s``, and soon after a verdict: a stage whose last device committed
        advances then, not up to ``tick_s`` later. Verdicts that arrive together (a stage
        finishing) share one tick."""
        while True:
            self._wake.clear()
            async with self._lock:
                try:
                    await self.controller.tick()
                except (ConnectionError, TimeoutError) as exc:  # sent again at the next tick
                    log.warning("rollout_command_not_delivered", error=repr(exc))
            if self.controller.waiting:  # offers the pace held back go as soon as it allows
                wait_s = max(self.controller.pace.wait_s(), PACE_STEP_S)
                await asyncio.sleep(min(wait_s, self.config.tick_s))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.tick_s)
                await asyncio.sleep(min(WAKE_GATHER_S, self.config.tick_s))

    async def _reconcile(self) -> None:
        """A verdict acknowledged to the broker just before a crash was never applied; the
        inventory, written in the same transaction as the ack, still holds it: a commit in the
        device's state, a failure or a block in its last event."""
        for row in list(self.inventory.devices.values()):
            for name, version in shown_commits(
                row.model, row.model_version, row.update_state, row.mcus
            ):
                await self.controller.on_committed(row.device, name, version)
            if (event := last_verdict(row)) is not None:
                await self.controller.on_event(event)

    async def start(self, plan: Plan) -> dict:
        release = await self.repository.release(plan.model, plan.version)
        if release is None:
            raise UserError(f"{plan.model} version {plan.version} is not a served release")
        devices = self.inventory.devices.values()
        if not isinstance(release, McuImage) and (why := evaluation_refusal(release.meta)):
            raise RolloutConflict(why)
        if isinstance(release, McuImage):
            facts, skipped = mcu_candidates(devices, plan.model, release.meta.image_version)
            meta = None  # the MCU judges whether an image fits it
        else:
            facts, skipped, sources = candidates(devices, plan.model, plan.version)
            offers = await self.repository.build_deltas(plan.model, plan.version, sources)
            log.info("rollout_deltas_ready", offers=[(o.fetch, o.kind, o.length) for o in offers])
            meta = release.meta
        async with self._lock:
            rollout = await self.controller.start(plan, facts, meta, skipped)
        self._wake.set()  # the first stage is offered now
        return await self.view(rollout.plan.rollout_id, rollout)

    async def view(self, rollout_id: str, rollout: Rollout | None = None) -> dict:
        rollout = rollout or await self.store.get(rollout_id)
        if rollout is None:
            raise UnknownRollout(f"no rollout {rollout_id!r}")
        progress = await self.store.progress(rollout_id)
        return detail(rollout, progress, await self.store.skipped(rollout_id))

    def routes(self) -> list[web.RouteDef]:
        def refused(exc: Exception) -> web.Response:
            return web.json_response({"error": str(exc)}, status=http_status(exc))

        async def listing(request: web.Request) -> web.Response:
            rollouts = [
                summary(r, await self.store.progress(r.plan.rollout_id))
                for r in await self.store.list()
            ]
            return web.json_response({"rollouts": rollouts})

        async def one(request: web.Request) -> web.Response:
            try:
                return web.json_response(await self.view(request.match_info["id"]))
            except RolloutError as exc:
                return refused(exc)

        async def create(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "the body is not JSON"}, status=400)
            try:
                return web.json_response(await self.start(plan_from(body)), status=201)
            except (UserError, RolloutError) as exc:
                return refused(exc)

        async def act(request: web.Request) -> web.Response:
            rollout_id, action = request.match_info["id"], request.match_info["action"]
            try:
                async with self._lock:
                    await getattr(self.controller, action)(rollout_id)
                self._wake.set()
                log.info("rollout_" + action, rollout=rollout_id)
                return web.json_response(await self.view(rollout_id))
            except RolloutError as exc:
                return refused(exc)

        return [
            web.get("/v1/rollouts", listing),
            web.post("/v1/rollouts", create),
            web.get("/v1/rollouts/{id}", one),
            web.post("/v1/rollouts/{id}/{action:pause|resume|abort}", act),
        ]

    async def __aenter__(self) -> RolloutService:
        self.store = await self._stack.enter_async_context(RolloutStore(self.config.database))
        self.controller = RolloutController(
            self.store,
            self.send,
            self.repository.url,
            reoffer_s=self.config.reoffer_s,
            offers_per_s=self.config.offers_per_s,
        )
        await self._reconcile()
        for active in await self.store.active():
            log.info("rollout_resumed", rollout=active.plan.rollout_id, state=active.state.value)
        self._tasks = [
            asyncio.create_task(self._apply(), name="rollout-verdicts"),
            asyncio.create_task(self._tick(), name="rollout-tick"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._done)
        return self

    def _done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.on_failure(task.exception())

    async def __aexit__(self, *exc) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stack.aclose()
