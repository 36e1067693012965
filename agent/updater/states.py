"""The update state machine: every allowed (state, event) -> next state in one table.

An event with no entry for the current state is a bug in the caller and raises; nothing moves
the machine except ``next_state``.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    IDLE = "IDLE"
    OFFERED = "OFFERED"
    DOWNLOADING = "DOWNLOADING"
    VERIFIED = "VERIFIED"
    INSTALLED = "INSTALLED"
    TRIAL = "TRIAL"
    COMMITTED = "COMMITTED"
    ROLLED_BACK = "ROLLED_BACK"
    REFUSED = "REFUSED"


class Step(StrEnum):
    OFFER = "offer"  # an update was offered
    PLANNED = "planned"  # signed metadata read, what to fetch decided
    FETCHED = "fetched"  # the candidate's bytes match the offline-signed target
    INSTALLED = "installed"  # candidate written and fsynced into the inactive slot
    GATE_PASSED = "gate_passed"  # health gate passed and an incumbent exists to fall back to
    FIRST_MODEL = "first_model"  # health gate passed on a device that had no model yet
    PROBATION_PASSED = "probation_passed"
    ROLLBACK = "rollback"  # probation failed, too many restarts in trial, or operator's order
    REFUSE = "refuse"  # refused before the active model changed


class InvalidTransition(RuntimeError):
    """An event that the current state does not accept."""


# States that accept a new offer.
AT_REST = frozenset({State.IDLE, State.COMMITTED, State.ROLLED_BACK, State.REFUSED})
# States before the switch: the incumbent is still the active model.
BEFORE_SWITCH = frozenset({State.OFFERED, State.DOWNLOADING, State.VERIFIED, State.INSTALLED})

TRANSITIONS: dict[tuple[State, Step], State] = {
    **{(state, Step.OFFER): State.OFFERED for state in AT_REST},
    (State.OFFERED, Step.PLANNED): State.DOWNLOADING,
    (State.DOWNLOADING, Step.FETCHED): State.VERIFIED,
    (State.VERIFIED, Step.INSTALLED): State.INSTALLED,
    (State.INSTALLED, Step.GATE_PASSED): State.TRIAL,
    (State.INSTALLED, Step.FIRST_MODEL): State.COMMITTED,
    (State.TRIAL, Step.PROBATION_PASSED): State.COMMITTED,
    (State.TRIAL, Step.ROLLBACK): State.ROLLED_BACK,
    **{(state, Step.REFUSE): State.REFUSED for state in BEFORE_SWITCH},
}


def next_state(state: State, event: Step) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"event {event.value!r} is not accepted in state {state}") from None
