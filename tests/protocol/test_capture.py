"""Trigger expressions and samples: parsed as data with bounded size, evaluated over columns,
and refused in one line when they are not what the contract allows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.capture import (
    FIELDS,
    FLAGS,
    MAX_NODES,
    MAX_TRIGGER_CHARS,
    NUMBERS,
    Campaign,
    evaluate,
    fields_of,
    parse_trigger,
)
from protocol.telemetry import (
    MAX_RAW_BYTES,
    Record,
    RecordId,
    Sample,
    Tensor,
    decode_batch,
    encode_batch,
)
from protocol.topics import Command, ProtocolError

COLUMNS = {
    "margin": np.array([0.05, 0.5, 0.15, 0.9]),
    "confidence": np.array([0.5, 0.7, 0.55, 0.95]),
    "class": np.array([2, 1, 3, 0]),
    "latency_ms": np.array([1.0, 2.0, 30.0, 4.0]),
    "random": np.array([0.001, 0.5, 0.2, 0.009]),
    "drift": np.array([False, True, False, False]),
    "disagree": np.array([False, False, True, False]),
}


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("margin < 0.2", [0, 2]),
        ("margin < 0.2 or class in [2, 3]", [0, 2]),
        ("class in [1, 0]", [1, 3]),
        ("class not in [1, 0]", [0, 2]),
        ("margin < 0.2 and class == 3", [2]),
        ("drift or disagree", [1, 2]),
        ("not drift and confidence >= 0.7", [3]),
        ("(margin < 0.1 or margin > 0.8) and random < 0.01", [0, 3]),
        ("latency_ms > 10", [2]),
        ("not (class in [2] or drift)", [2, 3]),
    ],
)
def test_triggers_select_the_rows_they_say(text: str, rows: list[int]) -> None:
    tree = parse_trigger(text)
    assert np.flatnonzero(evaluate(tree, COLUMNS)).tolist() == rows
    assert parse_trigger(str(tree)) == tree  # the canonical text parses to the same tree


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("margin <", "ends early"),
        ("margins < 0.2", "unknown field 'margins'"),
        ("__import__('os')", "unexpected"),
        ("open or drift", "unknown field 'open'"),
        ("margin < 0.2 or", "ends early"),
        ("margin < 0.2 margin", "after a complete expression"),
        ("class in []", "expected a number"),
        ("class in [1, 2", "ends early"),
        ("margin = 0.2", "unexpected"),
        ("drift < 1 < 2", "after a complete expression"),
        ("margin < 1e400", "out of range"),
        ("(" * 20 + "drift" + ")" * 20, "nested deeper"),
        (" or ".join(["not drift"] * 38), f"more than {MAX_NODES} terms"),
        ("x" * (MAX_TRIGGER_CHARS + 1), "longer than"),
    ],
)
def test_bad_triggers_are_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ProtocolError, match=says.replace("(", r"\(").replace("[", r"\[")) as err:
        parse_trigger(text)
    assert "\n" not in str(err.value)


def _tree_text():
    number = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3))
    compare = st.builds(
        lambda f, op, v: f"{f} {op} {v}",
        st.sampled_from(NUMBERS),
        st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
        number,
    )
    within = st.builds(
        lambda f, neg, vs: f"{f} {'not in' if neg else 'in'} [{', '.join(map(str, vs))}]",
        st.sampled_from(NUMBERS),
        st.booleans(),
        st.lists(st.integers(0, 20), min_size=1, max_size=5),
    )
    leaf = st.one_of(compare, within, st.sampled_from(FLAGS))
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
            st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
            st.builds(lambda a: f"not ({a})", inner),
        ),
        max_leaves=8,
    )


@settings(max_examples=200, deadline=None)
@given(_tree_text())
def test_generated_triggers_round_trip_and_evaluate(text: str) -> None:
    tree = parse_trigger(text)
    assert parse_trigger(str(tree)) == tree
    assert fields_of(tree) <= set(FIELDS)
    assert evaluate(tree, COLUMNS).shape == (4,)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_tree_or_a_protocol_error(text: str) -> None:
    try:
        tree = parse_trigger(text)
    except ProtocolError:
        return
    assert evaluate(tree, COLUMNS).dtype == bool


def test_campaign_travels_as_a_command_and_is_checked_on_decode() -> None:
    campaign = Campaign("hard", "kws", "margin < 0.2 or class in [2, 3]", 50, 1_900_000_000_000)
    command = Command("c1", "campaign", model="kws", settings=campaign.settings())
    decoded = Command.decode(command.encode())
    assert Campaign.from_settings(decoded.model, decoded.settings) == campaign
    bad = json.loads(command.encode())
    bad["settings"]["trigger"] = "os.system('x')"
    with pytest.raises(ProtocolError, match="trigger"):
        Command.decode(json.dumps(bad).encode())
    with pytest.raises(ProtocolError, match="per_device"):
        Campaign("hard", "kws", "drift", 0)
    stop = Command("c2", "campaign_stop", settings={"campaign": "hard"})
    assert Command.decode(stop.encode()).settings == {"campaign": "hard"}


def _sample(data: bytes = bytes(range(40)), shape=(1, 10), dtype="float32") -> Sample:
    tensor = Tensor(dtype, shape, data)
    return Sample("kws", 3, "hard", "margin < 0.2", (0.1, 0.5, 0.4), True, tensor)


def test_sample_round_trip_through_a_batch() -> None:
    record = Record(RecordId("dev001", "ab12cd34", 7), 1_700_000_000_000, _sample())
    batch = decode_batch(encode_batch("dev001", [record.encode()]))
    assert batch.records == (record,)
    body = json.loads(record.encode())
    assert (body["class"], body["confidence"], body["margin"]) == (1, 0.5, 0.1)


def test_sample_input_cannot_inflate_past_its_shape() -> None:
    import base64
    import zlib

    body = json.loads(Record(RecordId("dev001", "ab12cd34", 0), 1, _sample()).encode())
    # A bomb: a few bytes that inflate to far more than the shape allows.
    body["input"]["zlib"] = base64.b64encode(zlib.compress(bytes(MAX_RAW_BYTES * 8))).decode()
    with pytest.raises(ProtocolError, match="does not match"):
        Record.from_json(body)
    body["input"]["shape"] = [MAX_RAW_BYTES]
    with pytest.raises(ProtocolError, match="too big"):
        Record.from_json(body)
    body["input"] = {"dtype": "float32", "shape": [1, 10], "zlib": "not base64!"}
    with pytest.raises(ProtocolError, match="base64"):
        Record.from_json(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.sampled_from(["float32", "int8", "float64"]) | _JSON,
            "shape": st.lists(st.integers(-2, 10**6), max_size=9) | _JSON,
            "zlib": st.binary(max_size=64).map(lambda b: __import__("base64").b64encode(b).decode())
            | _JSON,
        },
    )
)
def test_hostile_tensors_are_protocol_errors(data: dict) -> None:
    """Whatever a peer puts in a sample's input, decoding returns a tensor or refuses it."""
    try:
        tensor = Tensor.from_json(data)
    except ProtocolError:
        return
    assert len(tensor.data) <= MAX_RAW_BYTES
