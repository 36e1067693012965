"""One update, from offer to trial: the steps that need the repository and the runtime.

Each step is the handler of one saved state. It reads the saved state, does its work, and
returns the event (and the facts learnt) that the store persists before the next handler acts,
so a process killed anywhere resumes from the last saved state. Runs only in the update worker:
it imports python-tuf and the inference runtime.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agent.trust import TrustedRepository, TrustError, VerifiedTarget
from agent.updater.device import UpdaterDevice
from agent.updater.download import (
    DEFAULT_MAX_MODEL_BYTES,
    DownloadLimits,
)
from agent.updater.errors import Busy, Refused, Transient, UpdateError
from agent.updater.files import write_atomic
from agent.updater.gate import run_gate
from agent.updater.slots import SlotRecord
from agent.updater.states import AT_REST, BEFORE_SWITCH, State, Step
from agent.updater.store import Changes, Offer, Saved
from agent.updater.verified import check, fetch_verified, signed_target, trust_failure
from agent.updater.versions import VersionsError
from protocol.delta import DeltaError, Expected, apply_delta, delta_target_path
from protocol.gate_vectors import read_gate_vectors
from protocol.model_meta import EvalRef, EvalSet, MetadataError, ModelMeta

GATE_FILE = "gate.json"  # the verified gate vectors (either encoding), in the work folder
EVAL_FILE = "eval.npz"  # the verified evaluation set, in the work folder
MODEL_PATH = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})/(?P<version>[0-9]+)\.tflite")


@dataclass(frozen=True)
class CycleConfig:
    trusted_root: Path
    engine: str = "auto"
    # Caps every download (model, delta, gate vectors) and what a delta may rebuild.
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    # Model names this device may run; None: the name of the model it runs (any, while it
    # runs none: the first install is its provisioning).
    allowed_models: frozenset[str] | None = None
    download: DownloadLimits = field(default_factory=DownloadLimits)


# What a handler learnt: the step it ends with, and the facts the store saves with it.
Handled = tuple[Step, Changes]


def name_refusal(
    allowed: frozenset[str] | None, incumbent: SlotRecord | None, name: str
) -> str | None:
    """Why a model of ``name`` may not run on this device, or None."""
    if allowed is None:
        allowed = frozenset({incumbent.name}) if incumbent else None
    if allowed is None or name in allowed:
        return None
    return f"model {name!r} is not one this device runs (allowed: {', '.join(sorted(allowed))})"


def downgrade_refusal(
    incumbent: SlotRecord | None,
    highest: Mapping[str, int],
    name: str,
    version: int,
    custom: Mapping[str, Any],
) -> str | None:
    """Why an offered version may not replace the incumbent, or None. A version that is not
    newer than the running one of its name, or older than the highest of its name this device
    ever committed (``highest``, so leaving a name and coming back is no way down), is refused
    unless the targets key signed it as a rollback release."""
    rollback = custom.get("rollback") is True
    running = incumbent.version if incumbent is not None and incumbent.name == name else None
    if running is not None and (version == running or (version < running and not rollback)):
        return f"version {version} is not newer than the running {running}"
    floor = highest.get(name, 0)
    if version < floor and not rollback:
        return f"version {version} is older than {name} {floor}, which this device committed"
    return None


class Cycle:
    def __init__(self, device: UpdaterDevice, config: CycleConfig):
        self.device = device
        self.config = config
        self._trust: TrustedRepository | None = None

    def trust(self, offer: Offer) -> TrustedRepository:
        """One TUF refresh per worker process (a refresh is per ``Updater``)."""
        if self._trust is None:
            try:
                self._trust = TrustedRepository(
                    self.device.layout.tuf, offer.repository, self.config.trusted_root
                )
            except TrustError as exc:
                raise trust_failure(exc) from None
        return self._trust

    # -- driving -------------------------------------------------------------------------

    def start(self, offer: Offer | None) -> Saved:
        """Take ``offer`` (or resume the saved update when ``offer`` is None or the same)."""
        saved = self.device.settle(self.device.store.load())
        if offer is None or offer == saved.offer:
            return self.drive(saved)
        if saved.state not in AT_REST:
            raise Busy(f"an update to {saved.require_offer().target} is in state {saved.state}")
        pointer = self.device.slots.pointer()
        saved = self.device.store.advance(
            Saved(saves=saved.saves, state=saved.state),
            Step.OFFER,
            offer=offer,
            incumbent=pointer.active if pointer else None,
        )
        return self.drive(saved)

    def drive(self, saved: Saved) -> Saved:
        """Run handlers until a state that waits for someone else (trial, or at rest)."""
        while saved.state in BEFORE_SWITCH:
            try:
                event, changes = self.HANDLERS[saved.state](self, saved)
            except Refused as exc:
                event, changes = Step.REFUSE, {"reason": str(exc)}
            saved = self.device.settle(self.device.store.advance(saved, event, **changes))
        return saved

    # -- handlers ------------------------------------------------------------------------

    def plan(self, saved: Saved) -> Handled:
        """OFFERED: read the signed facts, refuse downgrades, choose a delta when one exists."""
        offer = saved.require_offer()
        match = MODEL_PATH.fullmatch(offer.target)
        if match is None:
            raise Refused(f"{offer.target}: not a model target path")
        target = self._signed(offer, offer.target)
        meta = self._meta(target)
        if (meta.name, meta.version) != (match["name"], int(match["version"])):
            raise Refused(f"{offer.target}: signed metadata names {meta.name} v{meta.version}")
        self._within_limit(target)
        why = name_refusal(self.config.allowed_models, saved.incumbent, meta.name)
        if why:
            raise Refused(f"not allowed: {why}")
        try:
            highest = self.device.versions.load()
        except VersionsError as exc:
            raise Refused(f"downgrade: cannot be judged: {exc}") from None
        why = downgrade_refusal(saved.incumbent, highest, meta.name, meta.version, target.custom)
        if why:
            raise Refused(f"downgrade: {why}")
        fetch_path = offer.target
        if saved.incumbent is not None and saved.incumbent.name == meta.name:
            candidate = delta_target_path(meta.name, saved.incumbent.version, meta.version)
            try:
                delta = self.trust(offer).target(candidate)
            except TrustError as exc:  # no delta signed for this step: the full model
                if exc.reason == "unreachable":
                    raise Transient(str(exc), exc.reason) from None
            else:  # a delta no smaller than the model is not worth its risk
                if delta.length < target.length:
                    fetch_path = candidate
        return Step.PLANNED, {"fetch": fetch_path}

    def _within_limit(self, signed: VerifiedTarget) -> None:
        """Refuse a target signed longer than ``max_model_bytes``, before a byte is fetched."""
        if signed.length > self.config.max_model_bytes:
            raise Refused(
                f"too-long: {signed.path} is signed as {signed.length} bytes, "
                f"more than max_model_bytes ({self.config.max_model_bytes})"
            )

    def download(self, saved: Saved) -> Handled:
        """DOWNLOADING: fetch (resuming), check against the signed hash, rebuild from a delta,
        and check the result against the offline-signed model before keeping it."""
        offer = saved.require_offer()
        target = self._signed(offer, offer.target)
        fallback = ""
        data: bytes | bytearray
        if saved.fetch == offer.target:
            data = self._fetch_verified(offer, offer.target)
        else:
            try:
                data = self._rebuild(saved, target)
            except UpdateError as exc:
                if exc.reason == "unreachable":
                    raise
                # A delta is transport only: a corrupted one costs a full download, not the update.
                fallback = f"delta refused ({exc}); fetched the full model"
                data = self._fetch_verified(offer, offer.target)
        meta = self._meta(target)
        gate_path, gate_sha256 = meta.gate.fetched
        gate = self._fetch_verified(offer, gate_path)
        if self._signed(offer, gate_path).sha256 != gate_sha256:
            raise Refused("gate vectors are not the ones the model metadata names")
        write_atomic(self.device.layout.work / GATE_FILE, gate, "vectors")
        if meta.evaluation is not None:
            evaluation = self._fetch_evaluation(offer, meta.evaluation)
            write_atomic(self.device.layout.work / EVAL_FILE, evaluation, "evaluation")
        write_atomic(self.device.layout.work / "candidate.tflite", data, "candidate")
        record = SlotRecord(
            slot=self.device.slots.inactive(),
            target=offer.target,
            name=meta.name,
            version=meta.version,
            sha256=target.sha256,
            length=target.length,
        )
        return Step.FETCHED, {"candidate": record, "reason": fallback}

    def _fetch_evaluation(self, offer: Offer, ref: EvalRef) -> bytes:
        """The evaluation set the model's metadata names. The targets key signs it in the same
        metadata as the model, so a target it does not list, or lists as other bytes, is a
        release no device may run; bytes that do not match on the way are transient."""
        try:
            signed = self.trust(offer).target(ref.path)
        except TrustError as exc:
            if exc.reason != "unknown-target":
                raise trust_failure(exc) from None
            raise Refused(f"evaluation set {ref.path} is not a signed target") from None
        if (signed.sha256, signed.length) != (ref.sha256, ref.length):
            raise Refused("evaluation set is not the one the model metadata names")
        return self._fetch_verified(offer, ref.path)

    def _rebuild(self, saved: Saved, target: VerifiedTarget) -> bytes | bytearray:
        """The model from the incumbent and the offered delta, checked against the signed
        model before it is kept. Only a plan with an incumbent chooses a delta."""
        offer = saved.require_offer()
        incumbent = saved.require_incumbent()
        delta = self._fetch_verified(offer, saved.fetch)
        source = self.device.slots.path(incumbent.slot).read_bytes()
        expected = Expected(
            bytes.fromhex(incumbent.sha256), bytes.fromhex(target.sha256), target.length
        )
        try:
            data = apply_delta(source, delta, expected)
        except DeltaError as exc:
            raise Refused(f"bad delta: {exc}", "bad-delta") from None
        self._check(offer, offer.target, data)
        return data

    def install(self, saved: Saved) -> Handled:
        """VERIFIED: write the verified candidate into the inactive slot, durably."""
        offer, candidate = saved.require_offer(), saved.require_candidate()
        data = (self.device.layout.work / "candidate.tflite").read_bytes()
        self._check(offer, offer.target, data)
        custom = self._meta(self._signed(offer, offer.target)).to_json()
        self.device.slots.install(candidate.slot, data, custom)
        return Step.INSTALLED, {}

    def gate(self, saved: Saved) -> Handled:
        """INSTALLED: the candidate, as it lies in its slot, must pass the health gate."""
        offer, candidate = saved.require_offer(), saved.require_candidate()
        if not self.device.slots.holds(candidate):
            raise Refused(f"slot {candidate.slot} does not hold the verified candidate")
        meta = self._meta(self._signed(offer, offer.target))
        try:
            vectors = read_gate_vectors((self.device.layout.work / GATE_FILE).read_bytes(), meta)
        except (OSError, ValueError, MetadataError) as exc:
            raise Refused(f"gate vectors unusable: {exc}") from None
        labelled = self._evaluation(meta)
        verdict = run_gate(
            self.device.slots.path(candidate.slot), meta, vectors, self.config.engine, labelled
        )
        if not verdict.passed:
            raise Refused(f"health gate: {verdict.summary}")
        first = saved.incumbent is None
        return (Step.FIRST_MODEL if first else Step.GATE_PASSED), {"reason": ""}

    def _evaluation(self, meta: ModelMeta) -> EvalSet | None:
        """The verified evaluation set in the work folder, read within its signed bounds."""
        if meta.evaluation is None:
            return None
        try:
            data = (self.device.layout.work / EVAL_FILE).read_bytes()
            if hashlib.sha256(data).hexdigest() != meta.evaluation.sha256:
                raise MetadataError("not the signed bytes")
            return EvalSet.from_bytes(data, meta)
        except (OSError, MetadataError) as exc:
            raise Refused(f"evaluation set unusable: {exc}") from None

    HANDLERS: ClassVar[Mapping[State, Callable[[Cycle, Saved], Handled]]] = {
        State.OFFERED: plan,
        State.DOWNLOADING: download,
        State.VERIFIED: install,
        State.INSTALLED: gate,
    }

    # -- trust helpers ---------------------------------------------------------------------

    def _signed(self, offer: Offer, path: str) -> VerifiedTarget:
        return signed_target(self.trust(offer), path)

    def _check(self, offer: Offer, path: str, data: bytes | bytearray) -> None:
        check(self.trust(offer), path, data)

    @staticmethod
    def _meta(target: VerifiedTarget) -> ModelMeta:
        try:
            return target.model_meta()
        except TrustError as exc:
            raise Refused(f"{exc.reason}: {exc}", exc.reason) from None

    def _fetch_verified(self, offer: Offer, path: str) -> bytes:
        signed = self._signed(offer, path)
        self._within_limit(signed)
        return fetch_verified(
            self.trust(offer), offer.repository, signed, self.device.layout.work,
            self.config.download,
        )  # fmt: skip
