"""The updater's files on one device, and the steps that need no network: finishing a switch,
commit, rollback, abort, and recovery at start-up.

Every step here is idempotent: each saved state has one action (``settle``) that makes the
active pointer agree with it, and recovery simply runs it again. The daemon calls these
in-process; they need neither TUF nor the inference runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from agent.updater.slots import Pointer, SlotError, SlotRecord, Slots
from agent.updater.states import AT_REST, BEFORE_SWITCH, InvalidTransition, State, Step
from agent.updater.store import Listener, Saved, StateStore, UnknownState
from agent.updater.versions import CommittedVersions, VersionsError


@dataclass(frozen=True)
class Layout:
    """``STATE_DIR/state.json``, ``versions.json`` (highest committed version per name),
    ``slots/``, ``work/`` (downloads in progress), ``tuf/``."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def versions(self) -> Path:
        return self.root / "versions.json"

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def tuf(self) -> Path:
        return self.root / "tuf"


def settled_pointer(saved: Saved) -> Pointer | None:
    """What the active pointer must say in ``saved``'s state (None: leave it as it is)."""
    if saved.state == State.TRIAL:
        return Pointer(saved.require_candidate(), saved.incumbent)
    if saved.state == State.COMMITTED:
        return Pointer(saved.require_candidate())
    if saved.state == State.ROLLED_BACK and saved.incumbent is not None:
        return Pointer(saved.incumbent)
    return None


POINTER_STEP = {State.TRIAL: "switch", State.COMMITTED: "commit", State.ROLLED_BACK: "rollback"}


class UpdaterDevice:
    def __init__(self, state_dir: Path, listener: Listener | None = None):
        self.layout = Layout(Path(state_dir))
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.work.mkdir(exist_ok=True)
        self.store = StateStore(self.layout.state, listener)
        self.slots = Slots(self.layout.slots)
        self.versions = CommittedVersions(self.layout.versions)

    def active(self) -> tuple[Path, SlotRecord] | None:
        """The model to run: its path and what was signed about it."""
        pointer = self.slots.pointer()
        return (self.slots.path(pointer.active.slot), pointer.active) if pointer else None

    def adopt(self, data: bytes, name: str, version: int, target: str) -> SlotRecord | None:
        """Take the model the device was set up with (named in its configuration) as its active
        slot, so that its first update has an incumbent to shadow and to fall back to. Only when
        no slot is active yet; the slot is written before the pointer, so a crash between them
        leaves nothing active and the next start adopts it again."""
        if self.slots.pointer() is not None:
            return None
        record = SlotRecord(
            slot=self.slots.inactive(),
            target=target,
            name=name,
            version=version,
            sha256=hashlib.sha256(data).hexdigest(),
            length=len(data),
        )
        self.slots.install(record.slot, data)
        self.slots.point(Pointer(record), "commit")
        with contextlib.suppress(VersionsError):  # unreadable: the next offer says so
            self.versions.record(name, version)
        return record

    def settle(self, saved: Saved) -> Saved:
        """Run the action of ``saved``'s state: point at the model that state says is active,
        and after a commit remember its version (both repeatable, so recovery re-runs them)."""
        wanted = settled_pointer(saved)
        if wanted is not None and self.slots.pointer() != wanted:
            if not self.slots.holds(wanted.active):
                if saved.state == State.TRIAL:
                    return self.finish(saved, commit=False, reason="candidate slot does not verify")
                raise SlotError(f"slot {wanted.active.slot} does not hold {wanted.active.target}")
            self.slots.point(wanted, POINTER_STEP[saved.state])
        if saved.state == State.COMMITTED:
            # An unreadable record is not repaired here: the next offer is refused, naming it.
            committed = saved.require_candidate()
            with contextlib.suppress(VersionsError):
                self.versions.record(committed.name, committed.version)
        if saved.state in AT_REST and any(self.layout.work.iterdir()):
            shutil.rmtree(self.layout.work)
            self.layout.work.mkdir()
        return saved

    def finish(self, saved: Saved, commit: bool, reason: str = "") -> Saved:
        """End a trial: commit the candidate, or roll back to the incumbent."""
        event = Step.PROBATION_PASSED if commit else Step.ROLLBACK
        return self.settle(self.store.advance(saved, event, reason=reason))

    def abort(self, saved: Saved, reason: str) -> Saved:
        """Give up an update that has not switched yet (the active model never changed)."""
        if saved.state not in BEFORE_SWITCH:
            raise InvalidTransition(f"nothing to abort in state {saved.state}")
        return self.settle(self.store.advance(saved, Step.REFUSE, reason=reason))

    def boot(self, max_trial_boots: int) -> Saved:
        """Recover at agent start: settle the saved state, count a start in TRIAL, and roll
        back when the state is unreadable or the trial has restarted too often."""
        try:
            saved = self.store.load()
        except UnknownState as exc:
            return self._rollback_unknown(str(exc))
        saved = self.settle(saved)
        if saved.state != State.TRIAL:
            return saved
        saved = self.store.save(replace(saved, boots=saved.boots + 1))
        if saved.boots > max_trial_boots:
            return self.finish(saved, commit=False, reason=f"{saved.boots - 1} restarts in trial")
        return saved

    def _rollback_unknown(self, why: str) -> Saved:
        """The one move outside the transition table: a state this agent cannot read is
        answered by returning to the previous model when there is one."""
        pointer = self.slots.pointer()
        if pointer is None:
            fallback, failed = None, None
        elif pointer.previous is not None and self.slots.holds(pointer.previous):
            fallback, failed = pointer.previous, pointer.active
        else:
            fallback, failed = pointer.active, None
        saved = Saved(State.ROLLED_BACK, incumbent=fallback, candidate=failed, reason=why)
        return self.settle(self.store.save(saved))
