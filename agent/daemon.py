"""The agent daemon: composes its parts on one exit stack, tells systemd how it is doing, and
stops in order on SIGTERM.

The parts, each with one job: the spool (records until the broker has them), capture (campaigns
and the sample spool), the MQTT link, the updater (``UpdateManager``: A/B slots, the update
worker), the attached MCUs, the model runner (which model runs, inference, drift, probation
evidence), the label socket (``[labels]``: applications' corrections, recorded as telemetry),
the update driver (update commands and the work they start) and the status report.
They are built in that order, each given what it needs, and unwound in reverse.

Shutdown order: stop the source and the pipeline (a chunk not yet in the spool was never a
record) and any update work (its child process is killed, which the updater survives by design);
end the MQTT session (retained offline status, DISCONNECT); release the engines; close the
updater and the spool (WAL checkpoint).

Who stops the agent is its caller's choice: ``run`` (the CLI) turns SIGTERM and SIGINT into
``request_stop``; a process hosting many agents calls it per agent, and ``abort`` for what a
power cut does to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time

import structlog

from agent.bad_input import BadInput
from agent.capture import Capture
from agent.config import AgentConfig
from agent.labels import LabelServer
from agent.link import Link
from agent.mcu.updater import McuUpdater
from agent.model_runner import ModelRunner
from agent.outbox import Outbox
from agent.spool import Spool, SpoolError
from agent.status_report import StatusReport
from agent.update_driver import UpdateDriver, report_transition
from agent.updater.manager import UpdateConfig, UpdateManager
from agent.updater.runners import WorkerRunner
from edgefleet import __version__
from edgefleet.errors import UserError
from edgefleet.sdnotify import Notifier
from protocol.capture import CAMPAIGN_KINDS

STOP_TIMEOUT_S = 5.0

log = structlog.get_logger()


def update_config(config: AgentConfig) -> UpdateConfig:
    """The updater keeps its TUF metadata, slots and state under ``state.dir/update``."""
    settings = config.update
    return UpdateConfig(
        state_dir=config.state_dir / "update",
        trusted_root=settings.trusted_root,
        engine=config.model.engine,
        worker_timeout_s=settings.worker_timeout_s,
        max_worker_crashes=settings.max_worker_crashes,
        max_model_bytes=settings.max_model_bytes,
        allowed_models=settings.allowed_models,
        probation=settings.probation,
    )


class Agent:
    """``run`` until ``request_stop``; ``update_runner`` is how update work runs (default: a
    child process)."""

    def __init__(self, config: AgentConfig, update_runner: WorkerRunner | None = None):
        self.config = config
        self.bad_input = BadInput()
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._update_runner = update_runner
        self._link: Link | None = None
        self._spools: list[Spool] = []

    def request_stop(self) -> None:
        """Stop as on SIGTERM: end inference and update work, drain the spool, say goodbye."""
        self._stop.set()

    def abort(self) -> None:
        """What a power cut leaves, for the caller that then cancels the agent's tasks: the MQTT
        connection drops without DISCONNECT (the broker publishes the last will), and the spools
        take no further write (the one in progress ends as its transaction does; what was
        waiting is lost, as it would be)."""
        if self._link is not None:
            self._link.abort()
        for spool in self._spools:
            spool.abort()

    async def run(self) -> int:
        cfg = self.config
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"state directory {cfg.state_dir}: {exc.strerror}") from None
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.notifier.close)
            try:
                spool = await stack.enter_async_context(
                    Spool(cfg.state_dir / "spool.db", cfg.telemetry.spool_bytes)
                )
            except SpoolError as exc:
                raise UserError(str(exc)) from None
            self._spools.append(spool)
            # The link runs only once every part exists; until then nothing calls these.
            report: StatusReport | None = None
            driver: UpdateDriver | None = None
            capture: Capture | None = None

            def on_command(command) -> None:
                part = capture if command.kind in CAMPAIGN_KINDS else driver
                part.on_command(command)

            link = Link(
                cfg.device_id,
                cfg.mqtt,
                cfg.telemetry,
                spool,
                lambda: report.status(link),
                on_command,
                self.bad_input,
            )
            self._link = link
            outbox = Outbox(cfg.device_id, link)
            capture = await stack.enter_async_context(
                Capture(
                    cfg.device_id,
                    cfg.capture,
                    cfg.state_dir / "samples.db",
                    outbox,
                    self.bad_input,
                    cfg.source.seed,
                )
            )
            link.samples = capture.spool
            if capture.spool is not None:
                self._spools.append(capture.spool)
            outbox.event("started", agent_version=__version__, boot=spool.stats.boot)
            updates = None
            if cfg.update is not None:
                manager = UpdateManager(
                    update_config(cfg),
                    functools.partial(report_transition, outbox),
                    runner=self._update_runner,
                )
                updates = await stack.enter_async_context(manager)
            mcus = None
            if cfg.mcus:
                mcus = McuUpdater(
                    cfg.mcus, cfg.state_dir / "mcu", cfg.update, outbox.event, outbox.notify
                )
                mcus = await stack.enter_async_context(mcus)
            models = await stack.enter_async_context(
                ModelRunner(cfg, spool, self.bad_input, outbox, updates, asyncio.Lock(), capture)
            )
            if updates is not None and updates.active_model() is None:
                configured = models.choose()
                await updates.adopt(configured.path, configured.name, configured.version)
            if cfg.labels_socket is not None:
                await stack.enter_async_context(
                    LabelServer(cfg.labels_socket, cfg.device_id, models.label, self.bad_input)
                )
            report = StatusReport(cfg, spool, self.bad_input, models, updates, mcus, capture)
            await models.follow()
            driver = await stack.enter_async_context(
                UpdateDriver(updates, models, mcus, outbox, self.bad_input)
            )
            link_task = asyncio.create_task(link.run(), name="link")
            watchdog_task = asyncio.create_task(self._watchdog(report, link), name="watchdog")
            self.notifier.send(READY="1", STATUS=report.systemd_status(link))
            log.info("agent_ready", device=cfg.device_id, boot=spool.stats.boot)
            code = await self._until_stopped(link_task, models)
            log.info("agent_stopping")
            self.notifier.send(STOPPING="1", STATUS="stopping")
            await models.stop()
            await driver.stop()
            watchdog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog_task
            await self._drain(link, link_task, spool)
            await self._stop_link(link, link_task)
        return code

    async def _watchdog(self, report: StatusReport, link: Link) -> None:
        interval = self.notifier.watchdog_s
        while True:
            self.notifier.send(WATCHDOG="1", STATUS=report.systemd_status(link))
            await asyncio.sleep(interval / 2 if interval else 60.0)

    async def _until_stopped(self, link_task: asyncio.Task, models: ModelRunner) -> int:
        """Wait for SIGTERM; a task that fails stops the agent with exit code 1."""
        stop_task = asyncio.create_task(self._stop.wait())
        seen: set[asyncio.Task] = set()
        code = 0
        while not self._stop.is_set():
            watched = {link_task, models.inference} - seen - {None}
            done, _ = await asyncio.wait(watched | {stop_task}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop_task}:
                seen.add(task)
                if not task.cancelled() and task.exception() is not None:
                    log.error("task_failed", task=task.get_name(), exc_info=task.exception())
                    code = 1
                    self._stop.set()
        return code

    async def _drain(self, link: Link, link_task: asyncio.Task, spool: Spool) -> None:
        """Give the link up to ``telemetry.drain_s`` to empty the spool."""
        if not self.config.telemetry.drain_s:
            return
        deadline = time.monotonic() + self.config.telemetry.drain_s
        await spool.settle()  # the last chunk's records, if the pipeline stopped mid-append
        link.flush()
        # The spool empties as the broker acknowledges: nothing signals it, so it is polled.
        while spool.stats.depth and not link_task.done() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if spool.stats.depth:
            log.warning("drain_incomplete", depth=spool.stats.depth)

    @staticmethod
    async def _stop_link(link: Link, link_task: asyncio.Task) -> None:
        link.stop()
        # Not wait_for: on timeout it waits for the cancelled task, which a wedged MQTT socket
        # can keep from ever ending.
        done, _ = await asyncio.wait({link_task}, timeout=STOP_TIMEOUT_S)
        if not done:
            log.warning("mqtt_stop_timed_out")
            link_task.cancel()


async def run(config: AgentConfig) -> int:
    """The daemon: one agent, stopped by SIGTERM or SIGINT."""
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    return await agent.run()
