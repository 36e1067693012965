"""Where a rollout's time goes, stage by stage: from the gateway's record of when it offered each
device the update and saw it commit, and the device's own events in between.

Phases of one device's update, each the median over the stage's devices:

* ``offer``: gateway sends the offer → the device's update work has saved it (MQTT delivery,
  the agent's driver, the update worker starting);
* ``download``: TUF refresh, delta or model download and verification;
* ``install``: the candidate written into the inactive slot;
* ``gate``: the health gate on the installed candidate and the switch to it;
* ``probation``: the candidate on trial against live inputs, until committed;
* ``reporting``: the device's commit event → the gateway's record of it.

``wait`` is the time between the previous stage's last commit (or the rollout's start) and the
stage's first offer: the controller noticing that the stage may advance. Device and gateway
times come from one machine's clock (a clock fault on a device skews its phases).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from protocol.topics import Event

# An event kind and the phase that ends with it, in the order an update passes them.
PHASE_ENDS = (
    ("update_offered", "offer"),
    ("update_downloaded", "download"),
    ("update_installed", "install"),
    ("update_trial", "gate"),
    ("update_committed", "probation"),
)
PHASES = (*(phase for _, phase in PHASE_ENDS), "reporting")


def _first_events(events: Iterable[Event], rollout: str) -> dict[str, dict[str, float]]:
    """device -> event kind -> when (s) the device first reported it for this rollout."""
    seen: dict[str, dict[str, float]] = {}
    for event in events:
        if event.detail.get("rollout") != rollout:
            continue
        kinds = seen.setdefault(event.device, {})
        kinds.setdefault(event.kind, event.ts_ms / 1000)
    return seen


def _phases(offered_at: float, committed_at: float, events: dict[str, float]) -> dict[str, float]:
    """One committed device's phase durations; a phase whose end it did not report is left
    out (its time then counts in the next phase it reported)."""
    durations: dict[str, float] = {}
    start = offered_at
    for kind, phase in PHASE_ENDS:
        if kind in events:
            durations[phase] = events[kind] - start
            start = events[kind]
    durations["reporting"] = committed_at - start
    return durations


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def rollout_timeline(view: dict, events: Iterable[Event]) -> dict:
    """The stage table of a rollout's time, from its ``GET /v1/rollouts/<id>`` view and the
    events the fleet sent."""
    reported = _first_events(events, view["id"])
    stages = []
    previous_end = view["created_at"]
    for index, percent in enumerate(view["plan"]["stages"]):
        members = [p for p in view["progress"] if p["stage"] == index]
        done = [p for p in members if p["offered_at"] and p["committed_at"]]
        phases = [
            _phases(p["offered_at"], p["committed_at"], reported.get(p["device"], {})) for p in done
        ]
        offered = [p["offered_at"] for p in members if p["offered_at"]]
        first_offer = min(offered, default=None)
        end = max((p["committed_at"] for p in done), default=None)
        stages.append(
            {
                "stage": index,
                "percent": percent,
                "devices": len(members),
                "committed": len(done),
                "wait_s": round(first_offer - previous_end, 2) if first_offer else None,
                "span_s": round(end - first_offer, 2) if end and first_offer else None,
                **{
                    f"{phase}_s": _median([p[phase] for p in phases if phase in p])
                    for phase in PHASES
                },
            }
        )
        previous_end = end or previous_end
    ends = [p["committed_at"] for p in view["progress"] if p["committed_at"]]
    total = round(max(ends) - view["created_at"], 2) if ends else None
    return {"rollout": view["id"], "total_s": total, "stages": stages}


def rollout_wall_s(steps: list[dict]) -> float | None:
    """A scenario's rollout as its timeline saw it: from the first rollout step (a step's
    ``at_s`` is when it ended: the rollout started, its deltas signed) to the end of the last
    wait; None without either."""
    rollouts = [s["at_s"] for s in steps if s["do"].startswith("rollout")]
    waits = [s["at_s"] for s in steps if s["do"].startswith("wait")]
    return round(waits[-1] - rollouts[0], 1) if rollouts and waits else None
