"""The capture part of the agent: campaign commands in, samples into their own spool, events out.

Commands and the records loop change campaigns under one lock, each change durable (in the
sample spool's database) before it is visible in memory, so the counts the records thread
plans with are never below the counts on disk. Per chunk, ``prepare`` (event loop) snapshots
what may be taken, ``pick`` (records thread) selects and encodes, ``keep`` (event loop) stores
samples and counts in one transaction and ends the campaigns that reached ``per_device``.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
import zlib
from dataclasses import dataclass

import numpy as np
import structlog

from agent.bad_input import BadInput
from agent.capture import store
from agent.capture.select import Armed, columns, select
from agent.config import CaptureConfig
from agent.outbox import Outbox
from agent.spool import Spool, SpoolError, SpoolStats
from edgefleet.engine import Result
from edgefleet.errors import UserError
from protocol.capture import Campaign, fields_of
from protocol.model_meta import TensorSpec
from protocol.telemetry import MAX_RAW_BYTES, Record, RecordId, Sample, Tensor
from protocol.topics import Command, ProtocolError

HOUR_MS = 3_600_000

log = structlog.get_logger()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Plan:
    """What one chunk may capture: the campaigns of the serving model and the room left."""

    armed: tuple[Armed, ...]
    fields: frozenset[str]
    hour: int
    hour_left: int
    drift: bool
    boot: str
    next_seq: int


@dataclass(frozen=True)
class Picked:
    bodies: list[bytes]
    taken: dict[str, int]
    hour: int
    next_seq: int


class Capture:
    """``async with Capture(...)``: opens the sample spool (when capture is enabled) and loads
    the campaigns kept there; ``on_command`` takes ``campaign`` and ``campaign_stop``."""

    def __init__(
        self,
        device: str,
        config: CaptureConfig,
        path,
        outbox: Outbox,
        bad_input: BadInput,
        seed: int = 0,
    ):
        self.device, self.config, self.outbox, self.bad_input = device, config, outbox, bad_input
        self.spool: Spool | None = (
            Spool(path, config.spool_bytes, store.SCHEMA) if config.enabled else None
        )
        self._entries: dict[str, store.Entry] = {}
        self._hour = self._hour_count = 0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._seed = [seed, zlib.crc32(device.encode())]

    @functools.cached_property
    def _rng(self) -> np.random.Generator:
        """Made at the first campaign that draws ``random``: numpy.random costs ~2 MB of RSS
        that an agent without one never pays."""
        return np.random.default_rng(self._seed)

    async def __aenter__(self) -> Capture:
        if self.spool is not None:
            try:
                await self.spool.__aenter__()
            except SpoolError as exc:
                raise UserError(str(exc)) from None
            self._entries, self._hour, self._hour_count = await self.spool.transact(store.load)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self.spool is not None:
            await self.spool.__aexit__(*exc)

    @property
    def running(self) -> list[Campaign]:
        return [e.campaign for e in self._entries.values() if e.ended is None]

    def stats(self) -> SpoolStats | None:
        return self.spool.stats if self.spool is not None else None

    # -- commands ------------------------------------------------------------------------

    def on_command(self, command: Command) -> None:
        log.info("command_received", id=command.id, kind=command.kind)
        self.bad_input.counts["commands"] += 1
        task = asyncio.create_task(self._command(command), name="campaign")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, command: Command) -> None:
        name = str(command.settings.get("campaign"))
        if self.spool is None:
            self.outbox.event(
                "campaign_refused", id=command.id, campaign=name, reason="capture is disabled"
            )
            return
        async with self._lock:
            try:
                if command.kind == "campaign":
                    await self._start(
                        command, Campaign.from_settings(command.model, command.settings)
                    )
                else:
                    await self._stop(command, name)
            except ProtocolError as exc:  # the link decoded it; a campaign is checked again here
                self.bad_input.record("bad_command", str(exc))
                self.outbox.event(
                    "command_rejected", id=command.id, command=command.kind, reason=str(exc)[:200]
                )
            except sqlite3.Error as exc:
                log.error("campaign_not_saved", campaign=name, error=str(exc))
                self.outbox.event("error", id=command.id, campaign=name, reason=str(exc)[:200])

    async def _start(self, command: Command, campaign: Campaign) -> None:
        held = self._entries.get(campaign.name)
        if held is not None and held.command == command.id:
            log.info("command_ignored", id=command.id, reason="campaign already in hand")
            return
        if (held is None or held.ended is not None) and len(
            self.running
        ) >= self.config.max_campaigns:
            self.outbox.event(
                "campaign_refused",
                id=command.id,
                campaign=campaign.name,
                reason=f"max_campaigns: {self.config.max_campaigns} running",
            )
            return
        now = now_ms()
        captured = await self.spool.transact(lambda db: store.save(db, campaign, command.id, now))
        self._entries.pop(campaign.name, None)  # the newest goes last: first come, first served
        self._entries[campaign.name] = store.Entry(campaign, captured, command.id)
        self.outbox.event(
            "campaign_started",
            id=command.id,
            campaign=campaign.name,
            model=campaign.model,
            trigger=campaign.trigger,
            per_device=campaign.per_device,
            until_ms=campaign.until_ms,
            captured=captured,
        )
        if captured >= campaign.per_device:
            await self._end(campaign.name, "per_device")
        elif campaign.until_ms is not None and campaign.until_ms <= now:
            await self._end(campaign.name, "until")

    async def _stop(self, command: Command, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None or entry.ended is not None:
            log.info("command_ignored", id=command.id, reason=f"no campaign {name[:64]!r} runs")
            return
        await self._end(name, "stopped")

    async def _end(self, name: str, reason: str) -> None:
        """Persist, then forget: under ``_lock``."""
        await self.spool.transact(lambda db: store.end(db, name, reason, now_ms()))
        entry = self._entries[name]
        entry.ended = reason
        log.info("campaign_ended", campaign=name, reason=reason, captured=entry.captured)
        self.outbox.event("campaign_ended", campaign=name, reason=reason, captured=entry.captured)

    async def _expire(self, name: str, reason: str) -> None:
        """End a campaign that ran out; if that cannot be saved it ends again at the next
        start (its count and ``until_ms`` are kept)."""
        try:
            await self._end(name, reason)
        except sqlite3.Error as exc:
            self._entries[name].ended = reason
            log.error("campaign_end_not_saved", campaign=name, error=str(exc))

    # -- the records loop ----------------------------------------------------------------

    @property
    def armed(self) -> bool:
        """Any campaign running (else the pipeline asks nothing more)."""
        return any(e.ended is None for e in self._entries.values())

    async def prepare(self, model: str, drift: bool) -> Plan | None:
        """The campaigns of ``model`` that may take inputs now; None when there is nothing to
        do. Campaigns past their ``until_ms`` end here."""
        async with self._lock:
            now = now_ms()
            for name, entry in list(self._entries.items()):
                until = entry.campaign.until_ms
                if entry.ended is None and until is not None and until <= now:
                    await self._expire(name, "until")
            armed = tuple(
                Armed(e.campaign, e.campaign.tree, e.campaign.per_device - e.captured)
                for e in self._entries.values()
                if e.ended is None and e.campaign.model == model
            )
            hour = now // HOUR_MS
            used = self._hour_count if hour <= self._hour else 0
            hour_left = self.config.max_per_hour - used
            if not armed or hour_left <= 0:
                return None
            fields = frozenset().union(*(fields_of(a.tree) for a in armed))
            stats = self.spool.stats
            return Plan(
                armed, fields, max(hour, self._hour), hour_left, drift, stats.boot, stats.next_seq
            )

    def pick(
        self,
        plan: Plan,
        samples: np.ndarray,
        ts_ms: np.ndarray,
        result: Result,
        spec: TensorSpec,
        model: tuple[str, int],
        shadow: tuple[np.ndarray, np.ndarray] | None,
    ) -> Picked | None:
        """In the records thread: select this chunk's inputs and encode them as samples."""
        mask, theirs = shadow if shadow is not None else (None, None)
        cols = columns(
            set(plan.fields), result.scores, result.latency_us, plan.drift, self._rng, mask, theirs
        )
        picks = select(plan.armed, cols, samples, result.scores, plan.hour_left)
        if not picks:
            return None
        bodies, taken, seq = [], {}, plan.next_seq
        for entry, rows in picks:
            campaign = entry.campaign
            for row in rows.tolist():
                tensor = spec.quantize(samples[row]).reshape(spec.shape)
                data = tensor.astype(tensor.dtype.newbyteorder("<")).tobytes()
                if len(data) > MAX_RAW_BYTES:
                    continue
                sample = Sample(
                    model[0],
                    model[1],
                    campaign.name,
                    campaign.trigger,
                    tuple(result.scores[row].tolist()),
                    plan.drift,
                    Tensor(tensor.dtype.name, tuple(spec.shape), data),
                )
                record = Record(RecordId(self.device, plan.boot, seq), int(ts_ms[row]), sample)
                bodies.append(record.encode())
                seq += 1
                taken[campaign.name] = taken.get(campaign.name, 0) + 1
        return Picked(bodies, taken, plan.hour, seq) if bodies else None

    async def keep(self, picked: Picked) -> None:
        """Store the samples, with the counts they add, in one transaction."""
        async with self._lock:
            hour_count = (self._hour_count if picked.hour <= self._hour else 0) + len(picked.bodies)
            hour = max(picked.hour, self._hour)

            def within(db: sqlite3.Connection) -> None:
                store.counted(db, picked.taken, hour, hour_count)

            await self.spool.append(picked.bodies, picked.next_seq, within)
            # Counted even if the database failed: the device then captures less, never more.
            self._hour, self._hour_count = hour, hour_count
            for name, count in picked.taken.items():
                entry = self._entries.get(name)
                if entry is None:
                    continue
                entry.captured += count
                if entry.ended is None and entry.captured >= entry.campaign.per_device:
                    await self._expire(name, "per_device")
