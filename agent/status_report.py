"""The device's retained status, read from every part (spool, link, model runner, updater,
MCUs), and the one line systemd shows."""

from __future__ import annotations

import time

from agent.bad_input import BadInput
from agent.capture import Capture
from agent.config import AgentConfig
from agent.link import Link
from agent.mcu.updater import McuUpdater
from agent.model_runner import ModelRunner
from agent.spool import Spool
from agent.updater.manager import UpdateManager
from agent.updater.states import State
from edgefleet import __version__
from protocol.topics import DriftInfo, ModelInfo, SpoolInfo, Status


class StatusReport:
    def __init__(
        self,
        config: AgentConfig,
        spool: Spool,
        bad_input: BadInput,
        models: ModelRunner,
        updates: UpdateManager | None,
        mcus: McuUpdater | None,
        capture: Capture | None = None,
    ):
        self.config, self.spool, self.bad_input, self.models = config, spool, bad_input, models
        self.updates, self.mcus, self.capture = updates, mcus, capture

    def status(self, link: Link) -> Status:
        spool = self.spool.stats
        serving, pipeline = self.models.serving, self.models.pipeline
        verdict = serving.drift.last if serving else None
        model = serving.model if serving else None
        counters: dict[str, int | float] = dict(self.bad_input.counts)
        if pipeline:
            counters["inferences"] = pipeline.stats.inferences
            counters["latency_us"] = round(pipeline.stats.latency_us_ewma, 1)
        counters["records_sent"] = link.stats.records
        counters["batches_sent"] = link.stats.batches
        counters["events_dropped"] = link.stats.events_dropped
        counters["connects"] = link.stats.connects
        samples = self.capture.stats() if self.capture else None
        if samples is not None:
            counters["samples_captured"] = samples.produced
            counters["samples_dropped"] = samples.dropped
            counters["samples_pending"] = samples.depth
            counters["samples_sent"] = link.stats.samples
            counters["campaigns"] = len(self.capture.running)
        return Status(
            device=self.config.device_id,
            state="online",
            ts_ms=time.time_ns() // 1_000_000,
            agent_version=__version__,
            boot=spool.boot,
            model=ModelInfo(model.name, model.version, model.sha256) if model else None,
            health=self.models.health,
            update_state=self.updates.state.value if self.updates else State.IDLE.value,
            slots=self.updates.status() if self.updates else {},
            drift=DriftInfo(verdict.window, verdict.max_psi, verdict.alarm, verdict.compared)
            if verdict
            else None,
            spool=SpoolInfo(
                spool.depth, spool.bytes, spool.cap_bytes, spool.dropped, spool.produced
            ),
            counters=counters,
            hardware_tags=self.config.hardware_tags,
            arena_bytes=self.config.arena_bytes,
            mcus=self.mcus.status() if self.mcus else (),
        )

    def systemd_status(self, link: Link) -> str:
        spool = self.spool.stats
        online = "online" if link.connected else "offline"
        return (
            f"{self.models.health}, mqtt {online}, spool {spool.depth} records, "
            f"{spool.dropped} dropped"
        )
