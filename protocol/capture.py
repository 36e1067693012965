"""Which inputs are worth keeping: trigger expressions and the campaigns that carry them.

A trigger is data, never code: ``margin < 0.2 or class in [2, 3]`` is parsed into a small tree
(comparisons, ``in`` lists, flags, ``and``/``or``/``not``, parentheses) that is checked against a
fixed vocabulary and evaluated over columns of numbers, one row per input. The device and the
gateway parse the same text with the same rules, so a trigger the gateway accepts is one every
device understands, and a device refuses what a peer sends outside them.

The vocabulary (what the device already computes for each input):

* ``margin``: top-1 score minus top-2 score; ``confidence``: the top-1 score;
* ``class``: the top-1 class index; ``latency_ms``: inference time;
* ``random``: uniform in [0, 1) per input (``random < 0.01`` keeps one input in a hundred);
* flags ``drift`` (the device is inside a drift-alarm window) and ``disagree`` (during an
  update's probation, candidate and incumbent chose different classes for this input).

A campaign names a trigger, the model it applies to, how many samples each device may send for
it, and optionally when it ends; it travels as a ``campaign`` command, and ``campaign_stop``
ends it. Limits the device owner sets (disk budget, samples per hour) bound every campaign.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.topics import MAX_INT, NAME_PATTERN, ProtocolError

NUMBERS = ("margin", "confidence", "class", "latency_ms", "random")
FLAGS = ("drift", "disagree")
FIELDS = NUMBERS + FLAGS
OPERATORS = ("<", "<=", ">", ">=", "==", "!=")
MAX_TRIGGER_CHARS = 512
MAX_NODES = 64
MAX_DEPTH = 16
MAX_LIST = 256
MAX_PER_DEVICE = 1_000_000
CAMPAIGN_KINDS = ("campaign", "campaign_stop")

_TOKEN = re.compile(
    r"\s*(?:(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<punct>[()\[\],])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)


def _fail(message: str) -> ProtocolError:
    return ProtocolError(message, "invalid")


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.field} {self.op} {_number(self.value)}"


@dataclass(frozen=True)
class Within:
    field: str
    values: tuple[float, ...]
    negated: bool = False

    def __str__(self) -> str:
        items = ", ".join(_number(v) for v in self.values)
        return f"{self.field} {'not in' if self.negated else 'in'} [{items}]"


@dataclass(frozen=True)
class Flag:
    field: str

    def __str__(self) -> str:
        return self.field


@dataclass(frozen=True)
class Not:
    term: Node

    def __str__(self) -> str:
        return f"not {_grouped(self.term)}"


@dataclass(frozen=True)
class Join:
    op: str  # "and" | "or"
    terms: tuple[Node, ...]

    def __str__(self) -> str:
        return f" {self.op} ".join(_grouped(t) for t in self.terms)


Node = Compare | Within | Flag | Not | Join


def _grouped(node: Node) -> str:
    return f"({node})" if isinstance(node, Join) else str(node)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


class _Parser:
    """Recursive descent over tokens, with the tree's size and depth bounded as it grows."""

    def __init__(self, text: str):
        self.tokens = self._lex(text)
        self.at = 0
        self.nodes = 0

    @staticmethod
    def _lex(text: str) -> list[tuple[str, str]]:
        tokens, at = [], 0
        while at < len(text):
            if text[at:].isspace():
                break
            match = _TOKEN.match(text, at)
            if match is None or match.end() == at:
                raise _fail(f"trigger: unexpected {text[at : at + 12].strip()!r} at {at}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            at = match.end()
        return tokens

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _fail(f"trigger: ends early{f', expected {value!r}' if value else ''}")
        if value is not None and token[1] != value:
            raise _fail(f"trigger: expected {value!r}, found {token[1]!r}")
        self.at += 1
        return token

    def node(self, node: Node) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _fail(f"trigger: more than {MAX_NODES} terms")
        return node

    def join(self, op: str, inner: Callable[[int], Node], depth: int) -> Node:
        terms = [inner(depth)]
        while (token := self.peek()) is not None and token == ("word", op):
            self.take()
            terms.append(inner(depth))
        return terms[0] if len(terms) == 1 else self.node(Join(op, tuple(terms)))

    def expression(self, depth: int = 0) -> Node:
        if depth > MAX_DEPTH:
            raise _fail(f"trigger: nested deeper than {MAX_DEPTH}")
        return self.join("or", self.conjunction, depth)

    def conjunction(self, depth: int) -> Node:
        return self.join("and", self.factor, depth)

    def factor(self, depth: int) -> Node:
        kind, value = self.take()
        if value == "not":
            return self.node(Not(self.factor(depth + 1)))
        if value == "(":
            inner = self.expression(depth + 1)
            self.take(")")
            return inner
        if kind != "word" or value not in FIELDS:
            raise _fail(f"trigger: unknown field {value!r} (one of {', '.join(FIELDS)})")
        if value in FLAGS:
            return self.node(Flag(value))
        return self.node(self.test(value))

    def test(self, field: str) -> Compare | Within:
        kind, value = self.take()
        negated = value == "not"
        if negated:
            kind, value = self.take("in")
        if value == "in":
            return Within(field, self.values(), negated)
        if kind != "op":
            raise _fail(f"trigger: {field} needs a comparison or 'in', found {value!r}")
        return Compare(field, value, self.number())

    def values(self) -> tuple[float, ...]:
        self.take("[")
        values = [self.number()]
        while self.peek() == ("punct", ","):
            self.take()
            values.append(self.number())
            if len(values) > MAX_LIST:
                raise _fail(f"trigger: a list holds at most {MAX_LIST} values")
        self.take("]")
        return tuple(values)

    def number(self) -> float:
        kind, value = self.take()
        if kind != "number":
            raise _fail(f"trigger: expected a number, found {value!r}")
        number = float(value)
        if not abs(number) < MAX_INT:
            raise _fail(f"trigger: number {value!r} is out of range")
        return number


def parse_trigger(text: Any) -> Node:
    """Trigger text -> its tree, or ``ProtocolError`` naming what is wrong."""
    if not isinstance(text, str):
        raise ProtocolError("trigger is not a string", "type")
    if not text.strip():
        raise _fail("trigger is empty")
    if len(text) > MAX_TRIGGER_CHARS:
        raise ProtocolError(f"trigger is longer than {MAX_TRIGGER_CHARS} characters", "size")
    parser = _Parser(text)
    tree = parser.expression()
    if (extra := parser.peek()) is not None:
        raise _fail(f"trigger: unexpected {extra[1]!r} after a complete expression")
    return tree


def fields_of(node: Node) -> set[str]:
    """The fields a trigger reads (a device computes only those)."""
    if isinstance(node, Compare | Within | Flag):
        return {node.field}
    if isinstance(node, Not):
        return fields_of(node.term)
    return set().union(*(fields_of(t) for t in node.terms))


_COMPARE = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def evaluate(node: Node, columns: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.bool_]:
    """Which rows the trigger selects; ``columns`` holds one array per field it reads."""
    if isinstance(node, Compare):
        result: npt.NDArray[np.bool_] = _COMPARE[node.op](columns[node.field], node.value)
        return result
    if isinstance(node, Within):
        found = np.isin(columns[node.field], np.asarray(node.values))
        return ~found if node.negated else found
    if isinstance(node, Flag):
        return np.asarray(columns[node.field], dtype=bool)
    if isinstance(node, Not):
        return ~evaluate(node.term, columns)
    parts = [evaluate(t, columns) for t in node.terms]
    combine = np.logical_and if node.op == "and" else np.logical_or
    out = parts[0]
    for part in parts[1:]:
        out = combine(out, part)
    return out


@dataclass(frozen=True)
class Campaign:
    """Capture what ``trigger`` selects from ``model``'s inputs, at most ``per_device`` samples
    per device, until ``until_ms`` (Unix ms) if set."""

    name: str
    model: str
    trigger: str
    per_device: int
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if NAME_PATTERN.fullmatch(self.name) is None:
            raise _fail(f"bad campaign name {self.name[:80]!r}")
        if NAME_PATTERN.fullmatch(self.model) is None:
            raise _fail(f"bad campaign model {self.model[:80]!r}")
        parse_trigger(self.trigger)
        if not 1 <= self.per_device <= MAX_PER_DEVICE:
            raise _fail(f"per_device must be from 1 to {MAX_PER_DEVICE}")
        if self.until_ms is not None and not 0 < self.until_ms < MAX_INT:
            raise _fail("until_ms is out of range")

    @property
    def tree(self) -> Node:
        return parse_trigger(self.trigger)

    def settings(self) -> dict[str, str | int | float | bool | None]:
        """The campaign as a command's settings (``Command(kind="campaign", model=...)``)."""
        return {
            "campaign": self.name,
            "trigger": self.trigger,
            "per_device": self.per_device,
            "until_ms": self.until_ms,
        }

    @classmethod
    def from_settings(cls, model: str | None, settings: Mapping[str, Any]) -> Campaign:
        """A campaign from a command's model and settings; ``ProtocolError`` if it is not one."""
        name, trigger = settings.get("campaign"), settings.get("trigger")
        per_device, until = settings.get("per_device"), settings.get("until_ms")
        if not isinstance(name, str) or not isinstance(trigger, str) or model is None:
            raise _fail("campaign needs a model, a campaign name and a trigger")
        if not isinstance(per_device, int) or isinstance(per_device, bool):
            raise ProtocolError("campaign per_device is not an integer", "type")
        if until is not None and (not isinstance(until, int) or isinstance(until, bool)):
            raise ProtocolError("campaign until_ms is not an integer", "type")
        return cls(name, model, trigger, per_device, until)
