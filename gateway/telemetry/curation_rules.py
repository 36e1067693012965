"""The ``[curation]`` section of gateway.toml: an ordered list of rules for the telemetry and
sample streams, checked when the file is read.

```toml
[curation]
summary_window_s = 60     # per device, model and version: counts, confidences, latencies, drift
default = "drop"          # what happens to a record no rule kept or dropped

[[curation.rule]]
stream = "samples"        # telemetry | samples | any
model = "kws"             # optional
when = "margin < 0.2"     # optional: the trigger language of protocol.capture
action = "quota"          # keep | drop | sample | quota | dedup | scrub
per_class = 100           # quota: per_device and/or per_class, per window_s
```

``keep`` and ``drop`` decide; ``sample`` keeps one matching record in ``every`` and drops the
rest; ``quota`` drops what is over it and passes the rest on; ``dedup`` drops a record whose
content (everything but its id and time) was seen before; ``scrub`` removes named top-level
fields and passes the record on.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet import tomlconfig
from protocol.capture import Node, parse_trigger
from protocol.topics import NAME_PATTERN, ProtocolError

ACTIONS = ("keep", "drop", "sample", "quota", "dedup", "scrub")
STREAMS = ("telemetry", "samples", "any")
# Fields a scrub may never remove: the record's identity and what routes it.
PROTECTED = ("dev", "boot", "seq", "ts_ms", "kind", "model", "version")
MAX_RULES = 64


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    stream: str = "any"
    model: str | None = None
    when: Node | None = None
    every: int = 1  # sample
    per_device: int | None = None  # quota
    per_class: int | None = None  # quota
    window_s: int = 3600  # quota
    fields: tuple[str, ...] = ()  # scrub

    def applies(self, stream: str, model: str) -> bool:
        return self.stream in ("any", stream) and self.model in (None, model)


@dataclass(frozen=True)
class CurationConfig:
    rules: tuple[Rule, ...]
    default: str = "drop"
    summary_window_s: int = 60
    dedup_memory: int = 100_000  # content hashes remembered (oldest forgotten first)


def parse(table: tomlconfig.Table) -> CurationConfig | None:
    """None when the section is absent: then every record is forwarded as it came."""
    if not table.data:
        return None
    rules = tuple(_rule(t, i) for i, t in enumerate(table.tables("rule", MAX_RULES)))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        table.fail("rule", "rule names must differ (they label the metrics)")
    config = CurationConfig(
        rules=rules,
        default=table.choice("default", ("keep", "drop"), "drop"),
        summary_window_s=table.value("summary_window_s", int, 60, 1, 86400),
        dedup_memory=table.value("dedup_memory", int, 100_000, 100, 100_000_000),
    )
    table.done()
    return config


def _rule(table: tomlconfig.Table, index: int) -> Rule:
    action = table.choice("action", ACTIONS, "keep")
    name = table.value("name", str, f"{index}-{action}")
    if not NAME_PATTERN.fullmatch(name):
        table.fail("name", "must be a short name: letters, digits, '.', '_' or '-'")
    model = table.value("model", str, None)
    if model is not None and not NAME_PATTERN.fullmatch(model):
        table.fail("model", "is not a model name")
    when = table.value("when", str, None)
    tree = None
    if when is not None:
        try:
            tree = parse_trigger(when)
        except ProtocolError as exc:
            table.fail("when", str(exc))
    rule = Rule(
        name=name,
        action=action,
        stream=table.choice("stream", STREAMS, "any"),
        model=model,
        when=tree,
        every=table.value("every", int, 1, 1, 1_000_000) if action == "sample" else 1,
        per_device=table.value("per_device", int, None, 0) if action == "quota" else None,
        per_class=table.value("per_class", int, None, 0) if action == "quota" else None,
        window_s=table.value("window_s", int, 3600, 1, 366 * 86400) if action == "quota" else 3600,
        fields=tuple(table.value("fields", list, [])) if action == "scrub" else (),
    )
    if action == "sample" and "every" not in table.data:
        table.fail("every", "is required for action = 'sample' (keep one in every N)")
    if action == "quota" and rule.per_device is None and rule.per_class is None:
        table.fail("per_device", "a quota needs per_device, per_class or both")
    if action == "scrub":
        if not rule.fields or not all(isinstance(f, str) and f for f in rule.fields):
            table.fail("fields", "a scrub needs a list of field names to remove")
        if protected := sorted(set(rule.fields) & set(PROTECTED)):
            table.fail("fields", f"cannot remove {protected[0]!r}: records are routed by it")
    table.done()
    return rule
