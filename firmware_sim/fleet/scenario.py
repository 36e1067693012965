"""A fleet scenario read from TOML: the fleet, a timeline of steps, and what the report must show.

Every key is checked when the file is read, before anything starts, so a typo costs a second and
not a three-minute run; errors name the file and the key (``step[2].kind: must be one of ...``).
Paths are relative to the scenario file; ``fixture:NAME`` names a model bundled with edgefleet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.config import probation_limits
from edgefleet import tomlconfig
from edgefleet.errors import UserError
from edgefleet.models import model_path
from firmware_sim.fleet.devices import PROBATION

GATES = ("pass", "fail-gate", "fail-probation")
FAULTS = (
    "broker-restart",
    "broker-down",
    "cloud-down",
    "cloud-errors",
    "partition",
    "power-cut",
    "mcu-power-cut",
    "corrupt-delta",
    "replay-metadata",
    "expire-metadata",
    "gateway-restart",
    "poison",
    "impersonate",
    "cloud-reject",
    "clock-jump",
    "clock-skew",
    "drift",
)
CLOCK_FAULTS = ("clock-jump", "clock-skew")
PROVISIONS = ("update", "config")
# "process": each device an agent process; "light": many agents per process (light_host.py)
MODES = ("process", "light")
NO_LIGHT = 'needs a process per device (not with fleet.mode = "light")'
ATTACKS = ("corrupt-delta", "replay-metadata", "expire-metadata")
BROKER_FAULTS = ("broker-restart", "broker-down")
LASTING = ("broker-down", "cloud-down", "cloud-errors", "cloud-reject", "partition", "clock-skew",
           *ATTACKS)  # fmt: skip
WITH_DEVICES = ("partition", "power-cut", "poison", "impersonate", "clock-skew", "drift")
SOURCES = ("noise", "bands")
MCU_PROTOCOLS = ("edgefleet", "smp", "mixed")
WAITS = (
    "rollout:completed",
    "rollout:paused",
    "devices_on_target:all",
    "mcus_on_target:all",
    "campaigns:ended",
)
REPORT_KEYS = (
    "scenario",
    "passed",
    "duration_s",
    "devices_total",
    "devices_on_target",
    "devices_rolled_back",
    "bricked",
    "rollout_state",
    "telemetry_sent",
    "telemetry_delivered_unique",
    "telemetry_lost",
    "telemetry_dropped_counted",
    "attacks_refused",
    "mcus_total",
    "mcus_on_target",
    "agent_restarts",
    "gateway_unplanned_exits",
    "malformed_counted",
    "impersonations_refused",
    "telemetry_dead_lettered",
    "update_refusals_transient",
    "devices_blocked",
    "metadata_expiry_warnings",
    "samples_captured",
    "samples_in_dataset",
    "cloud_bytes",
    "cloud_bytes_unfiltered",
    "cloud_bytes_ratio",
    "dataset",
    "quality",
    "evaluations",
)
# "all" in [expect] means: equal to this other report key.
ALL_OF = {"devices_on_target": "devices_total", "mcus_on_target": "mcus_total"}
COMPARISON = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*")
DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
OFFSET = re.compile(r"\s*([+-]?)\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_CLOCK_OFFSET_S = 100 * 365 * 86400.0


@dataclass(frozen=True)
class Fleet:
    devices: int
    model: Path
    version: int
    name: str = "model"
    mcus: int = 0
    mcu_version: int = 1
    rate_hz: float = 5.0
    provision: str = "update"  # "config": the model file in agent.toml, no update installed it
    mcu_protocol: str = "edgefleet"  # "smp": mcumgr as Zephyr speaks it; "mixed": alternating
    source: str = "noise"  # "bands": inputs with a class each (edgefleet.models.bands)
    capture: bool = False  # [capture] enabled on every device
    mode: str = "process"  # or "light": many agents per host process
    # Every agent's [update.probation]: the simulator's defaults with the scenario's keys over.
    probation: dict = field(default_factory=lambda: dict(PROBATION))


@dataclass(frozen=True)
class Release:
    version: int
    model: Path | None = None  # None: an MCU image (``image = true``)
    gate: str | None = None  # None: published exactly as given
    eval_labelled: bool = False  # sign the samples labelled so far as its evaluation set
    min_accuracy: float | None = None
    probation_min_agreement: float | None = None
    probation_max_psi: float | None = None


@dataclass(frozen=True)
class Rollout:
    version: int
    stages: tuple[int, ...] = (10, 50, 100)
    soak_s: float = 0.0
    max_failure_rate: float = 0.0
    auto_rollback: bool = False
    mcu: bool = False  # roll out the MCU image of this version instead of the model


@dataclass(frozen=True)
class Fault:
    kind: str
    for_s: float | None = None
    rate: float = 0.0
    devices: int | tuple[str, ...] | None = None
    state: str | None = None
    op: int | str | None = None
    count: int = 1  # poison: rounds of malformed messages per device
    by_s: float = 0.0  # clock-jump, clock-skew: the clock offset in seconds
    shift: float = 0.0  # drift: how the chosen devices' input bands move


@dataclass(frozen=True)
class LabelStep:
    """Label the dataset's samples (a ``fraction`` of those not labelled yet) with the truth
    the simulator knows (the class each banded input was made from)."""

    fraction: float = 1.0


@dataclass(frozen=True)
class EvaluateStep:
    """``edgefleet cloud evaluate MODEL --against VERSION`` on the labelled samples."""

    model: Path
    against: int | None = None
    min_accuracy: float | None = None  # a violation when the candidate measures below


@dataclass(frozen=True)
class CampaignStep:
    """Start a capture campaign through the gateway, as ``edgefleet campaign start`` does."""

    name: str
    model: str
    trigger: str
    per_device: int
    total: int


@dataclass(frozen=True)
class Wait:
    until: str
    timeout_s: float


@dataclass(frozen=True)
class Step:
    at_s: float
    action: Release | Rollout | Fault | Wait | CampaignStep | LabelStep | EvaluateStep
    index: int

    def describe(self) -> str:
        action = self.action
        if isinstance(action, Fault):
            return f"fault {action.kind}"
        if isinstance(action, Wait):
            return f"wait {action.until}"
        if isinstance(action, CampaignStep):
            return f"campaign {action.name} ({action.trigger})"
        if isinstance(action, LabelStep):
            return f"label {action.fraction:.0%} of the new samples"
        if isinstance(action, EvaluateStep):
            against = f" against v{action.against}" if action.against else ""
            return f"evaluate {action.model.name}{against}"
        if isinstance(action, Release):
            what = "model" if action.model else "mcu image"
            gate = f" ({action.gate})" if action.gate else ""
            return f"release {what} v{action.version}{gate}"
        return f"rollout {'mcu image ' if action.mcu else ''}v{action.version}"


@dataclass(frozen=True)
class Expectation:
    key: str
    want: Any  # a value, ("op", number) or "all"

    def check(self, report: dict) -> str | None:
        """None when ``report`` meets this expectation, else the violation in words."""
        got = report.get(self.key)
        if self.want == "all":
            want = report.get(ALL_OF[self.key])
            return None if got == want else f"{self.key} = {got}, expected all ({want})"
        if isinstance(self.want, tuple):
            op, number = self.want
            ok = isinstance(got, int | float) and not isinstance(got, bool)
            ok = (
                ok
                and {
                    ">=": got >= number,
                    "<=": got <= number,
                    ">": got > number,
                    "<": got < number,
                    "==": got == number,
                    "!=": got != number,
                }[op]
            )
            return None if ok else f"{self.key} = {got}, expected {op}{number:g}"
        return None if got == self.want else f"{self.key} = {got!r}, expected {self.want!r}"


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    time_limit_s: float
    fleet: Fleet
    steps: tuple[Step, ...]
    expect: tuple[Expectation, ...]
    source: Path = field(default=Path("."))
    curation: dict = field(default_factory=dict)  # the gateway's [curation] section, as given

    def faults_of(self, kinds: tuple[str, ...]) -> list[Step]:
        return [s for s in self.steps if isinstance(s.action, Fault) and s.action.kind in kinds]

    def without(self, kinds: tuple[str, ...]) -> Scenario:
        """This scenario less its fault steps of these kinds."""
        dropped = self.faults_of(kinds)
        return replace(self, steps=tuple(s for s in self.steps if s not in dropped))

    def clock_faults(self) -> list[Step]:
        return self.faults_of(CLOCK_FAULTS)

    def partitionable(self) -> set[str]:
        """Devices a ``partition`` may cut off, which alone go through relays: those it names,
        and for a count the first that many (relaying every device would make the simulator
        itself the bottleneck of a large fleet)."""
        names: set[str] = set()
        for step in self.steps:
            fault = step.action
            if isinstance(fault, Fault) and fault.kind == "partition":
                if isinstance(fault.devices, tuple):
                    names.update(fault.devices)
                else:
                    names.update(device_name(i) for i in range(fault.devices or 1))
        return names


def parse_duration(text: Any, where: str) -> float:
    """``"5s"``, ``"1.5m"``, ``"500ms"``, ``"2h"``, ``"3d"`` or a number of seconds -> seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool) and text >= 0:
        return float(text)
    match = DURATION.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise UserError(f"{where}: bad duration {text!r}: use a number with ms, s, m, h or d")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_offset(text: Any, where: str) -> float:
    """A clock offset: ``"+400d"``, ``"-2h"``, ``"45d"`` or a number of seconds -> seconds,
    within a century either way and never zero (a fault that changes nothing is a mistake)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = OFFSET.fullmatch(text) if isinstance(text, str) else None
        if not match:
            raise UserError(
                f"{where}: bad clock offset {text!r}: use a signed number with ms, s, m, h or d"
            )
        seconds = float(match.group(2)) * UNITS[match.group(3)]
        seconds = -seconds if match.group(1) == "-" else seconds
    if not 0 < abs(seconds) <= MAX_CLOCK_OFFSET_S:
        raise UserError(f"{where}: clock offset {text!r} must be non-zero and within 100 years")
    return seconds


def resolve_model(text: str, base: Path, where: str) -> Path:
    if text.startswith("fixture:"):
        try:
            return model_path(text.removeprefix("fixture:"))
        except FileNotFoundError as exc:
            raise UserError(f"{where}: {exc.args[0]}") from None
    path = Path(text) if Path(text).is_absolute() else base / text
    if not path.is_file():
        raise UserError(f"{where}: no such model file {path}")
    return path


def load(path: Path) -> Scenario:
    label = str(path)
    return parse(tomlconfig.read(path, label), label, path.resolve().parent)


def parse(data: dict, label: str, base: Path) -> Scenario:
    root = tomlconfig.Table(label, "", data, base)
    name = root.value("name", str)
    seed = root.value("seed", int, 0)
    time_limit = parse_duration(root.value("time_limit", str | int | float, "180s"), label)
    fleet = _fleet(root.table("fleet"), base)
    raw_steps = root.value("step", list, [])
    steps = tuple(
        _step(tomlconfig.Table(label, f"step[{i}]", raw, base), base, i, fleet)
        for i, raw in enumerate(raw_steps)
    )
    expect = _expect(root.table("expect"))
    curation = _curation(root.table("curation"))
    root.done()
    return Scenario(name, seed, time_limit, fleet, steps, expect, base, curation)


def _curation(table: tomlconfig.Table) -> dict:
    """Checked now with the gateway's own rules, so a bad rule fails before anything starts."""
    from gateway.telemetry import curation_rules

    curation_rules.parse(tomlconfig.Table(table.label, table.path, dict(table.data), table.base))
    table.used.update(table.data)
    return dict(table.data)


def _fleet(table: tomlconfig.Table, base: Path) -> Fleet:
    fleet = Fleet(
        devices=table.value("devices", int, lo=1, hi=10_000),
        model=resolve_model(table.value("model", str), base, f"{table.label}: fleet.model"),
        version=table.value("version", int, 1, 1, 2**31),
        name=table.value("name", str, "model"),
        mcus=table.value("mcus", int, 0, 0, 10_000),
        mcu_version=table.value("mcu_version", int, 1, 1, 255),
        rate_hz=table.value("rate_hz", float, 5.0, 0.1, 1000.0),
        provision=table.choice("provision", PROVISIONS, "update"),
        mcu_protocol=table.choice("mcu_protocol", MCU_PROTOCOLS, "edgefleet"),
        source=table.choice("source", SOURCES, "noise"),
        capture=table.value("capture", bool, False),
        mode=table.choice("mode", MODES, "process"),
        probation=_probation(table.table("probation")),
    )
    if fleet.mcus > fleet.devices:
        table.fail("mcus", "must not exceed devices (each MCU hangs off one agent)")
    if fleet.mcus and fleet.mode == "light":
        table.fail("mcus", f"an attached MCU's serial line {NO_LIGHT}")
    table.done()
    return fleet


def _probation(table: tomlconfig.Table) -> dict:
    """The devices' probation: the simulator's defaults, each key the scenario gives over
    them, checked as an agent checks its ``[update.probation]``."""
    if not isinstance(table.data, dict):
        raise UserError(f"{table.label}: key {table.path}: must be a table of probation limits")
    merged = PROBATION | table.data
    probation_limits(tomlconfig.Table(table.label, table.path, merged, table.base))
    return merged


def _step(table: tomlconfig.Table, base: Path, index: int, fleet: Fleet) -> Step:
    at = parse_duration(table.value("at", str | int | float), f"{table.label}: {table.path}.at")
    kind = table.choice("do", tuple(STEPS), ...)
    action = STEPS[kind](table, base, fleet)
    table.done()
    return Step(at, action, index)


def _release(table: tomlconfig.Table, base: Path, fleet: Fleet) -> Release:
    version = table.value("version", int, lo=1, hi=2**31)
    if table.value("image", bool, False):
        if not fleet.mcus:
            table.fail("image", "an MCU image release needs fleet.mcus > 0")
        return Release(version)
    model = resolve_model(table.value("model", str), base, f"{table.label}: {table.path}.model")
    gate = table.value("gate", str, None)
    if gate is not None and gate not in GATES:
        table.fail("gate", f"must be one of {', '.join(GATES)}")
    eval_set = table.value("eval_set", str, None)
    if eval_set not in (None, "labelled"):
        table.fail("eval_set", '"labelled" (the samples labelled so far) is the one choice')
    min_accuracy = table.value("min_accuracy", float, None, 0.0, 1.0)
    if (eval_set is None) != (min_accuracy is None):
        table.fail("min_accuracy", "eval_set and min_accuracy go together")
    agreement = table.value("probation_min_agreement", float, None, 0.0, 1.0)
    psi = table.value("probation_max_psi", float, None, 0.0, 1000.0)
    return Release(version, model, gate, eval_set is not None, min_accuracy, agreement, psi)


def _rollout(table: tomlconfig.Table, base: Path, fleet: Fleet) -> Rollout:
    stages = table.value("stages", list, [10, 50, 100])
    if not stages or not all(isinstance(s, int) and 0 < s <= 100 for s in stages):
        table.fail("stages", "must be a list of percentages between 1 and 100")
    if stages != sorted(set(stages)) or stages[-1] != 100:
        table.fail("stages", "must rise and end at 100")
    soak = table.value("soak", str | int | float, 0)
    return Rollout(
        version=table.value("version", int, lo=1, hi=2**31),
        stages=tuple(stages),
        soak_s=parse_duration(soak, f"{table.label}: {table.path}.soak"),
        max_failure_rate=table.value("max_failure_rate", float, 0.0, 0.0, 1.0),
        auto_rollback=table.value("auto_rollback", bool, False),
        mcu=table.value("mcu", bool, False),
    )


def _fault(table: tomlconfig.Table, base: Path, fleet: Fleet) -> Fault:
    kind = table.choice("kind", FAULTS, ...)
    where = f"{table.label}: {table.path}"
    lasting = kind in LASTING
    for_s = None
    if kind == "drift" and "for" in table.data:  # without it, the inputs stay moved
        for_s = parse_duration(table.value("for", str | int | float), f"{where}.for")
    if lasting:
        default = "10s" if kind in ATTACKS else ...
        for_s = parse_duration(table.value("for", str | int | float, default), f"{where}.for")
    rate = 0.0
    if kind in ("cloud-errors", "cloud-reject"):
        rate = table.value("rate", float, 0.5, 0.0, 1.0)
    devices = _devices(table, fleet) if kind in WITH_DEVICES else None
    count = table.value("count", int, 1, 1, 100) if kind == "poison" else 1
    by_s = 0.0
    if kind in CLOCK_FAULTS:
        if fleet.mode == "light":
            table.fail("kind", f"{kind}: a device's own clock (libfaketime) {NO_LIGHT}")
        by_s = parse_offset(table.value("by", str | int | float), f"{where}.by")
        if kind == "clock-jump" and by_s < 0:
            table.fail("by", "a clock jump goes forward (use clock-skew for a clock behind)")
    state = table.value("state", str, None) if kind == "power-cut" else None
    if state is not None and state.upper() not in STATES:
        table.fail("state", f"must be one of {', '.join(s.lower() for s in STATES)}")
    op = None
    if kind == "mcu-power-cut":
        if not fleet.mcus:
            table.fail("kind", "mcu-power-cut needs fleet.mcus > 0")
        op = table.value("op", int | str, "random")
        if op != "random" and not (isinstance(op, int) and op >= 1):
            table.fail("op", 'must be a flash operation index >= 1 or "random"')
    state = state.upper() if state else None
    shift = 0.0
    if kind == "drift":
        if fleet.source != "bands":
            table.fail("kind", 'drift moves the input bands: needs fleet.source = "bands"')
        shift = table.value("shift", float, lo=-10.0, hi=10.0)
        if shift == 0:
            table.fail("shift", "must not be 0 (a drift that changes nothing is a mistake)")
    return Fault(kind, for_s, rate, devices, state, op, count, by_s, shift)


# Update states a power cut can wait for (the updater saves each before it acts on it).
STATES = ("OFFERED", "DOWNLOADING", "VERIFIED", "INSTALLED", "TRIAL", "COMMITTED")


def _devices(table: tomlconfig.Table, fleet: Fleet) -> int | tuple[str, ...]:
    devices = table.value("devices", int | list, 1)
    if isinstance(devices, int):
        if not 1 <= devices <= fleet.devices:
            table.fail("devices", f"must be between 1 and {fleet.devices}")
        return devices
    known = {device_name(i) for i in range(fleet.devices)}
    if not devices or not all(isinstance(d, str) and d in known for d in devices):
        table.fail("devices", f"must be a count or a list of device ids ({device_name(0)}, ...)")
    return tuple(devices)


def _campaign(table: tomlconfig.Table, base: Path, fleet: Fleet) -> CampaignStep:
    from protocol.capture import Campaign
    from protocol.topics import ProtocolError

    step = CampaignStep(
        name=table.value("name", str),
        model=table.value("model", str, fleet.name),
        trigger=table.value("trigger", str),
        per_device=table.value("per_device", int, 50, 1, 1_000_000),
        total=table.value("total", int, 2000, 1, 1_000_000_000),
    )
    try:
        Campaign(step.name, step.model, step.trigger, step.per_device)
    except ProtocolError as exc:
        table.fail("trigger" if "trigger" in str(exc) else "name", str(exc))
    return step


def _label(table: tomlconfig.Table, base: Path, fleet: Fleet) -> LabelStep:
    if fleet.source != "bands":
        table.fail(
            "do", 'the simulator knows the truth only of banded inputs: fleet.source = "bands"'
        )
    return LabelStep(table.value("fraction", float, 1.0, 0.0, 1.0))


def _evaluate(table: tomlconfig.Table, base: Path, fleet: Fleet) -> EvaluateStep:
    where = f"{table.label}: {table.path}.model"
    return EvaluateStep(
        model=resolve_model(table.value("model", str), base, where),
        against=table.value("against", int, None, 1, 2**31),
        min_accuracy=table.value("min_accuracy", float, None, 0.0, 1.0),
    )


def _wait(table: tomlconfig.Table, base: Path, fleet: Fleet) -> Wait:
    until = table.choice("until", WAITS, ...)
    timeout = table.value("timeout", str | int | float, "60s")
    return Wait(until, parse_duration(timeout, f"{table.label}: {table.path}.timeout"))


def _expect(table: tomlconfig.Table) -> tuple[Expectation, ...]:
    expectations = []
    for key in list(table.data):
        if key not in REPORT_KEYS:
            table.fail(key, f"not a report key (one of {', '.join(REPORT_KEYS)})")
        want = table.value(key, str | int | float | bool)
        if want == "all":
            if key not in ALL_OF:
                table.fail(key, f'"all" only applies to {", ".join(ALL_OF)}')
        elif isinstance(want, str) and key not in ("scenario", "rollout_state"):
            match = COMPARISON.fullmatch(want)
            if not match:
                table.fail(key, 'must be a value, a comparison like ">=1" or "<=0.01", or "all"')
            want = (match.group(1), float(match.group(2)))
        expectations.append(Expectation(key, want))
    table.done()
    return tuple(expectations)


STEPS = {
    "release": _release,
    "rollout": _rollout,
    "fault": _fault,
    "wait": _wait,
    "campaign": _campaign,
    "label": _label,
    "evaluate": _evaluate,
}


def device_name(index: int) -> str:
    return f"dev{index:03d}"
