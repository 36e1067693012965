"""The agent's attached MCUs (``[[mcu]]``): what each keeps, for the status, and their updates.

An ``update`` command whose model is an MCU's name is that MCU's update: the target is
``<name>/<version>.bin``. The work runs in ``python -m agent.mcu.worker`` (TUF, download, serial
I/O), one job per MCU at a time; the daemon only relays what the worker prints as events with
the rollout id, and keeps each MCU's version and state for the retained status. Nothing is
saved here: the MCU itself holds the state of an update (its upload record and slot flags), so
an offer sent again after a restart resumes the upload, or only confirms an image on trial.
The status poll leaves an MCU alone while its update runs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.config import McuSettings, UpdateSettings
from agent.updater.child import run_child
from protocol.mcu_image import target_path
from protocol.topics import Command, McuInfo

log = structlog.get_logger()

POLL_S = 60.0
QUERY_TIMEOUT_S = 60.0
# The event each worker result is published as; "unreachable" (the repository) has none: the
# gateway offers again, and the download resumes.
RESULT_EVENTS = {
    "committed": "update_committed",
    "refused": "update_refused",
    "failed": "update_failed",
    "rolled_back": "update_rolled_back",
}


def decide(command: Command, configured: bool, job: str | None) -> tuple[str, str]:
    """``(act | ignore | reject, reason)`` for a command to an MCU. MQTT delivers at least once,
    so the rollout already in progress is ignored, never rejected."""
    if command.kind != "update":
        return "reject", "an MCU image is confirmed once it ran; there is no trial to roll back"
    if not configured:
        return "reject", "updates are not configured on this agent (no [update] section)"
    rollout = command.rollout or ""
    if job is not None:
        if job == rollout:
            return "ignore", "this rollout is in progress"
        return "reject", f"busy with rollout {job!r}"
    return "act", ""


@dataclass
class Mcu:
    settings: McuSettings
    version: str | None = None
    state: str = "unknown"
    job: str | None = None  # the rollout being installed
    port_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def worker_args(self) -> list[str]:
        s = self.settings
        return [
            "--port", s.port, "--baud", str(s.baud), "--timeout", str(s.timeout_s),
            "--protocol", s.protocol, *([] if s.compress else ["--no-compress"]),
        ]  # fmt: skip


class McuUpdater:
    def __init__(
        self,
        mcus: tuple[McuSettings, ...],
        state_dir: Path,
        update: UpdateSettings | None,
        on_event: Callable[..., None],
        on_change: Callable[[], None],
    ):
        self._mcus = {settings.name: Mcu(settings) for settings in mcus}
        self._state_dir = state_dir
        self._update = update
        self._on_event = on_event
        self._on_change = on_change
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> McuUpdater:
        self._spawn(self._poll(), "mcu-poll")
        return self

    async def __aexit__(self, *exc) -> None:
        """Cancel polls and updates; a worker killed mid-update leaves the MCU safe."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mcu_task_failed", task=task.get_name(), exc_info=task.exception())

    # -- what the daemon asks ------------------------------------------------------------

    def tracks(self, command: Command) -> bool:
        """Whether ``command`` is for one of the MCUs rather than for the model."""
        return command.kind in ("update", "rollback") and command.model in self._mcus

    def status(self) -> tuple[McuInfo, ...]:
        return tuple(McuInfo(name, m.version, m.state) for name, m in self._mcus.items())

    def command(self, command: Command) -> None:
        mcu = self._mcus[command.model]
        rollout = command.rollout or ""
        action, reason = decide(command, self._update is not None, mcu.job)
        if action == "reject":
            self._on_event(
                "command_rejected",
                id=command.id,
                command=command.kind,
                rollout=rollout,
                mcu=mcu.settings.name,
                reason=reason,
            )
        elif action == "ignore":
            log.info("command_ignored", id=command.id, rollout=rollout, reason=reason)
        else:
            mcu.job = rollout
            self._spawn(self._install(mcu, command), f"mcu-update-{mcu.settings.name}")

    # -- work ----------------------------------------------------------------------------

    def _set(self, mcu: Mcu, version: str | None, state: str) -> None:
        if (mcu.version, mcu.state) != (version, state):
            mcu.version, mcu.state = version, state
            self._on_change()

    async def _install(self, mcu: Mcu, command: Command) -> None:
        name = mcu.settings.name
        target = target_path(name, command.version)
        detail = {"rollout": mcu.job, "target": target, "mcu": name}
        result: dict = {}

        def relay(line: dict) -> None:
            if line.get("step") == "verified":
                self._on_event("update_downloaded", **detail)
            elif line.get("step") == "retry":
                log.warning("mcu_update_retry", mcu=name, **line)
            elif "result" in line:
                result.update(line)

        try:
            async with mcu.port_lock:
                self._set(mcu, mcu.version, "updating")
                self._on_event("update_offered", **detail)
                args = [
                    "update",
                    "--state-dir", str(self._state_dir / name),
                    "--root", str(self._update.trusted_root),
                    "--repository", command.repository,
                    "--target", target,
                ]  # fmt: skip
                code, stderr = await self._worker(mcu, args, relay, self._update.worker_timeout_s)
            self._finish(mcu, detail, result, code, stderr)
        except Exception as exc:  # the daemon outlives a failed update step
            log.exception("mcu_update_failed", mcu=name)
            self._set(mcu, mcu.version, "failed")
            self._on_event("error", **detail, reason=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            mcu.job = None
        if result.get("result") != "committed":
            await self._query(mcu)

    def _finish(self, mcu: Mcu, detail: dict, result: dict, code, stderr: str) -> None:
        outcome, reason = result.get("result"), result.get("reason", "")
        log.info("mcu_update_ended", mcu=mcu.settings.name, **result)
        if outcome == "committed":
            self._set(mcu, result["version"], "ok")
            detail = detail | {"version": result["version"]}
        elif outcome in RESULT_EVENTS:
            self._set(mcu, mcu.version, "failed")
        kind = RESULT_EVENTS.get(outcome)
        if kind is not None:
            self._on_event(kind, **detail, **({"reason": reason[:512]} if reason else {}))
        elif outcome is None:
            why = f"MCU worker ended with {code}: {stderr.strip()[-400:]}"
            log.warning("mcu_worker_failed", mcu=mcu.settings.name, reason=why)
            self._set(mcu, mcu.version, "failed")
            self._on_event("error", **detail, reason=why)

    async def _poll(self) -> None:
        while True:
            for mcu in self._mcus.values():
                if not mcu.port_lock.locked():
                    await self._query(mcu)
            await asyncio.sleep(POLL_S)

    async def _query(self, mcu: Mcu) -> None:
        """Ask the MCU what it keeps. A reachable MCU whose last update failed stays ``failed``
        until the next update, so the failure stays in the status."""
        answer: dict = {}
        async with mcu.port_lock:
            await self._worker(mcu, ["query"], answer.update, QUERY_TIMEOUT_S)
        if answer.get("state") == "ok":
            self._set(mcu, answer["version"], "failed" if mcu.state == "failed" else "ok")
        else:
            self._set(mcu, None, "unreachable")
            log.info("mcu_unreachable", mcu=mcu.settings.name, reason=answer.get("reason"))

    async def _worker(
        self,
        mcu: Mcu,
        args: list[str],
        on_line: Callable[[dict], None],
        limit_s: float,
    ) -> tuple[int | None, str]:
        """Run the worker for ``mcu``, handing each JSON line it prints to ``on_line`` (killing
        it leaves the MCU safe: it keeps the image it runs until a swap is confirmed)."""
        command = [sys.executable, "-m", "agent.mcu.worker", *mcu.worker_args(), *args]
        return await run_child(command, on_line, limit_s)
