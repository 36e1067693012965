"""The updater's saved state: one versioned JSON file, replaced atomically before every action.

A file this agent cannot read (another format version, an unknown state, torn or edited bytes)
raises ``UnknownState``; recovery answers it with a rollback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from agent.updater.files import write_atomic
from agent.updater.slots import SlotError, SlotRecord
from agent.updater.states import State, Step, next_state

STATE_FORMAT = 1


class UnknownState(Exception):
    """The saved state is not one this agent wrote."""


@dataclass(frozen=True)
class Offer:
    """What the gateway asked for. The same offer delivered twice is one update."""

    repository: str
    target: str
    rollout: str = ""

    def to_json(self) -> dict[str, str]:
        return {"repository": self.repository, "target": self.target, "rollout": self.rollout}


_T = TypeVar("_T")


@dataclass(frozen=True)
class Saved:
    """The update in hand. Which optional fields are set follows from ``state``: the offer from
    OFFERED to TRIAL, the candidate from VERIFIED to COMMITTED, the incumbent in TRIAL (a
    device's first model goes straight to COMMITTED). Code that runs only in such states reads
    them through ``require_*``: a saved state that breaks the rule is ``UnknownState``."""

    state: State = State.IDLE
    offer: Offer | None = None
    fetch: str = ""  # the target downloaded: a delta path or the model path itself
    incumbent: SlotRecord | None = None  # the model active when the offer came
    candidate: SlotRecord | None = None  # the offered model, once its bytes are verified
    boots: int = 0  # agent starts while in TRIAL
    reason: str = ""  # why the last refusal or rollback happened
    saves: int = 0

    def require_offer(self) -> Offer:
        return _required(self.offer, "offer", self.state)

    def require_candidate(self) -> SlotRecord:
        return _required(self.candidate, "candidate", self.state)

    def require_incumbent(self) -> SlotRecord:
        return _required(self.incumbent, "incumbent", self.state)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "state": self.state.value,
            "offer": self.offer.to_json() if self.offer else None,
            "fetch": self.fetch,
            "incumbent": self.incumbent.to_json() if self.incumbent else None,
            "candidate": self.candidate.to_json() if self.candidate else None,
            "boots": self.boots,
            "reason": self.reason,
            "saves": self.saves,
        }

    @classmethod
    def from_json(cls, data: object) -> Saved:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise UnknownState("saved state has an unknown format")
        try:
            offer, incumbent, candidate = data["offer"], data["incumbent"], data["candidate"]
            return cls(
                state=State(data["state"]),
                offer=Offer(**offer) if offer else None,
                fetch=str(data["fetch"]),
                incumbent=SlotRecord.from_json(incumbent) if incumbent else None,
                candidate=SlotRecord.from_json(candidate) if candidate else None,
                boots=int(data["boots"]),
                reason=str(data["reason"]),
                saves=int(data["saves"]),
            )
        except (KeyError, TypeError, ValueError, SlotError) as exc:
            raise UnknownState(f"saved state is unreadable: {exc!r}") from None


class Changes(TypedDict, total=False):
    """The facts an event saves with the state it leads to."""

    offer: Offer
    incumbent: SlotRecord | None
    fetch: str
    candidate: SlotRecord
    reason: str


def _required(value: _T | None, name: str, state: State) -> _T:
    if value is None:
        raise UnknownState(f"saved state {state.value} has no {name}")
    return value


Listener = Callable[[Saved, Step | None], None]


class StateStore:
    def __init__(self, path: Path, listener: Listener | None = None):
        self.path = Path(path)
        self.listener = listener

    def load(self) -> Saved:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Saved()
        try:
            data = json.loads(raw)
        except ValueError:
            raise UnknownState(f"{self.path}: not JSON") from None
        return Saved.from_json(data)

    def save(self, saved: Saved, event: Step | None = None) -> Saved:
        saved = replace(saved, saves=saved.saves + 1)
        data = json.dumps(saved.to_json(), indent=1, sort_keys=True).encode()
        write_atomic(self.path, data, f"state.{saved.state.value}")
        if self.listener:
            self.listener(saved, event)
        return saved

    def advance(self, saved: Saved, event: Step, **changes: Unpack[Changes]) -> Saved:
        """Persist the state ``event`` leads to (with ``changes``) before anyone acts on it."""
        return self.save(replace(saved, state=next_state(saved.state, event), **changes), event)
