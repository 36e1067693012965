"""The scenario report: what the fleet ended up running and what happened to its telemetry,
measured (never assumed) at the end of a run, and judged against the scenario's ``[expect]``.

Telemetry: every agent counts in its spool the records it produced and those its byte cap
dropped; the gateway counts what its spool and its dead-letter cap dropped, lists in its
summaries the ids of the records its curation rules kept from the cloud, and keeps the records
the cloud refused for good as dead letters; the cloud keeps each record id once. So
``telemetry_lost = sent - delivered_unique - dropped_counted - curated_out - dead_lettered``
is what vanished uncounted, and a healthy site reports 0.

The data loop: ``samples_captured`` counts what the devices' sample spools took in,
``samples_in_dataset`` the distinct samples in the cloud's Parquet dataset; ``cloud_bytes`` is
the record bytes the cloud confirmed, ``cloud_bytes_unfiltered`` the record bytes the devices
sent (what forwarding everything would have sent), both uncompressed NDJSON.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from firmware_sim.fleet import labeller
from firmware_sim.fleet.scenario import Scenario
from firmware_sim.fleet.timeline import rollout_timeline
from firmware_sim.fleet.world import World

SETTLE_S = 30.0
BUSY = ("OFFERED", "DOWNLOADING", "VERIFIED", "INSTALLED")  # update states that move on alone
DRAIN_S = 60.0


@dataclass
class Outcome:
    """What the runner observed on the way."""

    startup_s: float = 0.0
    duration_s: float = 0.0
    steps: list[dict] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def target_version(world: World, mcu: bool) -> int:
    """The version the last rollout aimed at (the fleet's first version when none ran)."""
    for rollout in reversed(world.rollouts):
        if rollout.mcu == mcu:
            return rollout.version
    return world.fleet.mcu_version if mcu else world.fleet.version


def devices_on_target(world: World) -> int:
    version = target_version(world, mcu=False)
    count = 0
    for device in world.devices:
        status = world.monitor.status(device.name)
        model = status.model if status is not None and status.state == "online" else None
        count += model is not None and model.name == world.fleet.name and model.version == version
    return count


def mcus_on_target(world: World) -> int:
    version = target_version(world, mcu=True)
    name = world.mcu_image_name
    return sum(1 for mcu in world.mcus if mcu.reported_version(world.monitor, name) == version)


def bricked(world: World) -> list[str]:
    """Devices not online with a model: an agent that cannot start or has nothing to run."""
    found = []
    for device in world.devices:
        status = world.monitor.status(device.name)
        if status is None or status.state != "online" or status.model is None:
            found.append(device.name)
    return found


def unsettled(world: World, since_ms: float) -> list[str]:
    """Devices without a status published after ``since_ms`` or in the middle of an update."""
    found = []
    for device in world.devices:
        status = world.monitor.status(device.name)
        if status is None or status.ts_ms < since_ms or status.update_state in BUSY:
            found.append(device.name)
    return found


async def collect(world: World, scenario: Scenario, outcome: Outcome) -> dict:
    """Let the fleet settle (every device reports afresh, none mid-update), then measure."""
    since_ms = time.time() * 1000
    deadline = time.monotonic() + SETTLE_S
    # Devices settle in other processes: polled.
    while (bricked(world) or unsettled(world, since_ms)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    view = await world.rollout_view()
    fleet_state = {
        "devices_total": len(world.devices),
        "devices_on_target": devices_on_target(world),
        "devices_rolled_back": len(world.monitor.event_devices("update_rolled_back")),
        "bricked": len(bricked(world)),
        "rollout_state": view["state"] if view else "none",
        "rollout_timeline": rollout_timeline(view, world.monitor.events_seen()) if view else None,
        "mcus_total": len(world.mcus),
        "mcus_on_target": mcus_on_target(world),
        "attacks_refused": world.monitor.attacks_refused(),
        "update_refusals_transient": world.monitor.event_counts()["update_blocked"],
        "devices_blocked": sum(
            1 for p in (view or {}).get("progress", []) if p.get("state") == "blocked"
        ),
    }
    status = await world.gateway.get("/v1/status")
    fleet_state["metadata_expiry_warnings"] = len(
        (status.get("metadata") or {}).get("warnings", [])
    )
    attempts = world.counters.impersonations
    security = {
        "malformed_counted": round(await world.gateway.malformed_total()),
        "malformed_published": world.counters.poisoned,
        "impersonations_refused": sum(a.refused for a in attempts),
        "impersonation_attempts": [a.to_json() for a in attempts],
    }
    await world.stop_devices()
    delivery = await _telemetry(world)
    report = {
        "scenario": scenario.name,
        "passed": False,
        "broker": world.broker.kind,
        "duration_s": round(outcome.duration_s, 2),
        "startup_s": round(outcome.startup_s, 2),
        **fleet_state,
        **delivery,
        **security,
        **world.usage.report(),
        "quality": labeller.accuracy_by_phase(world.cloud.dataset_dir, world.fleet.name)
        if world.labelled
        else [],
        "evaluations": world.evaluations,
        "agent_restarts": world.counters.agent_restarts,
        "gateway_unplanned_exits": len(world.gateway.unplanned_exits),
        "update_bytes_served": dict(world.relay.served),
        "events": dict(sorted(world.monitor.event_counts().items())),
        "steps": outcome.steps,
    }
    violations = outcome.violations + world.counters.crashes + world.gateway.unplanned_exits
    if report["dead_letter_records_kept"] < report["telemetry_dead_lettered"]:
        violations.append(
            f"the cloud refused {report['telemetry_dead_lettered']} records for good but the "
            f"gateway keeps only {report['dead_letter_records_kept']} in dead letters"
        )
    violations += [v for e in scenario.expect if (v := e.check(report)) is not None]
    report["violations"] = violations
    report["passed"] = not violations
    return report


async def _telemetry(world: World) -> dict:
    """After the agents drained: close the gateway's summary windows (they list the records
    curation kept home) and wait for the gateway to hand everything to the cloud."""
    if world.scenario.curation:
        await world.gateway.post("/v1/curation/flush", {})
    deadline = time.monotonic() + DRAIN_S
    last = -1
    while time.monotonic() < deadline:
        status = await world.gateway.get("/v1/status")
        delivered = len(world.cloud.ids)
        if status["spool"]["records"] == 0 and delivered == last:
            break
        last = delivered
        await asyncio.sleep(1.0)
    spools = [device.spool() for device in world.devices]
    samples = [device.samples() for device in world.devices]
    sent = sum(s.produced for s in spools)
    traffic = status.get("traffic") or {}
    # By id, from the summaries: a record curated out twice (sent again) counts once, and one
    # curated out once and delivered another time counts as delivered.
    curated = len(world.cloud.curated_ids - world.cloud.ids) + world.cloud.curated_unlisted
    seconds = world.fleet_window[1] - world.fleet_window[0]
    dead = (await world.gateway.get("/v1/dead-letters"))["stats"]
    dropped = sum(s.dropped for s in spools) + status["spool"]["dropped"] + dead["dropped_records"]
    delivered = len(world.cloud.ids)
    # Refused for good and never delivered otherwise (a record an agent sent twice may be in
    # a delivered batch and in a refused one); the gateway must still hold them.
    dead_lettered = len(world.cloud.rejected_ids - world.cloud.ids)
    return {
        "telemetry_sent": sent,
        "telemetry_delivered_unique": delivered,
        "telemetry_dropped_counted": dropped,
        "telemetry_dead_lettered": dead_lettered,
        "telemetry_curated_out": curated,
        "telemetry_lost": sent - delivered - dropped - curated - dead_lettered,
        "telemetry_left_on_devices": sum(s.left for s in spools),
        "telemetry_per_s": round(sent / seconds, 1),
        "cloud_refused_requests": world.cloud.refused_requests,
        "cloud_rejected_requests": world.cloud.rejected_requests,
        "dead_letter_records_kept": dead["records"],
        "samples_captured": sum(s.produced for s in samples),
        "samples_dropped_on_devices": sum(s.dropped for s in samples),
        "samples_in_dataset": len(world.cloud.sample_ids),
        "summaries_in_dataset": world.cloud.summaries,
        "cloud_bytes": traffic.get("cloud_bytes", 0),
        "cloud_bytes_unfiltered": traffic.get("device_bytes", 0),
        "cloud_bytes_ratio": traffic.get("ratio"),
        "dataset": str(world.cloud.dataset_dir),
    }
