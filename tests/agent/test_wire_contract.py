"""Property tests of the wire contract: telemetry batches, status, events and commands round-trip
exactly, and any malformed bytes fail with ``ProtocolError`` and nothing else."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.capture import Campaign
from protocol.telemetry import (
    MAX_BATCH_BYTES,
    DriftWindow,
    Inference,
    InputSummary,
    RawInput,
    Record,
    RecordId,
    decode_batch,
    encode_batch,
    encode_inferences,
)
from protocol.topics import (
    COMMAND_KINDS,
    EVENT_KINDS,
    Command,
    DriftInfo,
    Event,
    ModelInfo,
    ProtocolError,
    SpoolInfo,
    Status,
    device_topic,
    parse_device_topic,
)

settings.register_profile("agent", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("agent")

devices = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
boots = st.from_regex(r"[0-9a-f]{8,32}", fullmatch=True)
counts = st.integers(0, 2**40)
text = st.text(max_size=40)
int64 = st.integers(-(2**63) + 1, 2**63 - 1)  # the contract's integers


def rounded(digits: int = 6):
    return st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, digits))


summaries = st.builds(
    InputSummary,
    rounded(),
    rounded(),
    rounded(),
    rounded(),
    st.lists(rounded(5), max_size=32).map(tuple),
)
raws = st.builds(
    lambda shape, data: RawInput("int8", shape, data[: shape[0] * shape[1]]),
    st.tuples(st.integers(1, 8), st.integers(1, 8)),
    st.binary(min_size=64, max_size=64),
)
inferences = st.builds(
    Inference,
    names,
    st.integers(1, 2**31),
    st.lists(st.tuples(st.integers(0, 1023), rounded()), min_size=1, max_size=5).map(tuple),
    counts,
    summaries,
    st.none() | raws,
)
hist = st.lists(st.integers(0, 10**6), max_size=10).map(tuple)
drift_windows = st.builds(
    DriftWindow,
    names,
    st.integers(1, 100),
    counts,
    st.booleans(),
    st.booleans(),
    rounded().map(abs),
    st.lists(rounded(), max_size=5).map(tuple),
    st.lists(rounded(), max_size=5).map(tuple),
    rounded(),
    st.lists(hist, max_size=4).map(tuple),
    st.lists(hist, max_size=4).map(tuple),
    hist,
)


@st.composite
def batches(draw):
    device = draw(devices)
    boot = draw(boots)
    bodies = draw(st.lists(inferences | drift_windows, min_size=1, max_size=8))
    start = draw(counts)
    return device, [
        Record(RecordId(device, boot, start + i), draw(counts), body)
        for i, body in enumerate(bodies)
    ]


@given(batches())
def test_batch_round_trip(batch):
    device, records = batch
    payload = encode_batch(device, [r.encode() for r in records])
    decoded = decode_batch(payload)
    assert decoded.device == device
    assert list(decoded.records) == records
    assert len({r.id.key for r in decoded.records}) == len(records)


@given(devices, boots, counts, st.lists(inferences, min_size=1, max_size=6), st.data())
def test_bulk_encoder_writes_the_same_bytes(device, boot, first, bodies, data):
    """The device's hot-path encoder and the reference ``Record.encode`` agree byte for byte."""
    model, version = bodies[0].model, bodies[0].version
    floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
    bodies = [
        dataclasses.replace(
            b,
            model=model,
            version=version,
            summary=InputSummary(
                *data.draw(st.tuples(floats, floats, floats, floats)),
                tuple(data.draw(st.lists(floats, max_size=8))),
            ),
        )
        for b in bodies
    ]
    ts = [data.draw(counts) for _ in bodies]
    bulk = encode_inferences(
        device,
        boot,
        first,
        model,
        version,
        ts,
        [b.top for b in bodies],
        [b.latency_us for b in bodies],
        [(b.summary.mean, b.summary.std, b.summary.min, b.summary.max) for b in bodies],
        [b.summary.features for b in bodies],
        [b.raw for b in bodies],
    )
    reference = [
        Record(RecordId(device, boot, first + i), ts[i], body).encode()
        for i, body in enumerate(bodies)
    ]
    assert bulk == reference


def test_bulk_encoder_refuses_non_finite_numbers():
    with pytest.raises(ProtocolError, match="non-finite"):
        encode_inferences(
            "d",
            "00ff00ff",
            0,
            "m",
            1,
            [0],
            [[(0, float("nan"))]],
            [1],
            [(0.0, 0.0, 0.0, 0.0)],
            [()],
            [None],
        )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


def mutations(valid: bytes):
    """Truncations, byte flips, and fields replaced by arbitrary JSON."""
    data = json.loads(valid)

    def replace(path_and_value):
        key, value = path_and_value
        target = data["records"][0] if "records" in data and key.startswith("r.") else data
        copy = json.loads(json.dumps(data))
        holder = copy["records"][0] if target is not data else copy
        holder[key.removeprefix("r.")] = value
        return json.dumps(copy).encode()

    keys = [*data] + [f"r.{k}" for k in data.get("records", [{}])[0]]
    return st.one_of(
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
            lambda p: valid[: p[0]] + bytes([p[1]]) + valid[p[0] + 1 :]
        ),
        st.tuples(st.sampled_from(keys), json_values).map(replace),
        st.binary(max_size=200),
    )


VALID_BATCH = encode_batch(
    "dev1",
    [
        Record(
            RecordId("dev1", "00ff00ff", 5),
            1,
            Inference(
                "m",
                1,
                ((1, 0.5),),
                10,
                InputSummary(0, 1, -1, 1, (0.5,)),
                RawInput("int8", (2,), b"\x01\x02"),
            ),
        ).encode()
    ],
)


@given(st.data())
def test_malformed_batches_raise_only_protocol_error(data):
    payload = data.draw(mutations(VALID_BATCH))
    with contextlib.suppress(ProtocolError):
        decode_batch(payload)


def test_oversize_and_wrong_device_batches_are_refused():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_batch(b" " * (MAX_BATCH_BYTES + 1))
    record = json.loads(VALID_BATCH)["records"][0]
    foreign = {"schema": 1, "device": "dev2", "records": [record]}
    with pytest.raises(ProtocolError, match="another device"):
        decode_batch(json.dumps(foreign).encode())
    with pytest.raises(ProtocolError, match="too big"):
        encode_batch("dev1", [b"x" * MAX_BATCH_BYTES])


statuses = st.builds(
    Status,
    device=devices,
    state=st.just("online"),
    ts_ms=counts,
    agent_version=text,
    boot=boots,
    model=st.none()
    | st.builds(ModelInfo, names, counts, st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
    health=text,
    update_state=text,
    slots=st.dictionaries(st.text(max_size=10), int64 | text, max_size=3),
    drift=st.none()
    | st.builds(DriftInfo, counts, rounded().map(abs), st.booleans(), st.booleans()),
    spool=st.none() | st.builds(SpoolInfo, counts, counts, counts, counts, counts),
    counters=st.dictionaries(st.text(max_size=10), int64 | rounded(), max_size=5),
    hardware_tags=st.lists(names, max_size=4).map(tuple),
    arena_bytes=st.none() | counts,
)
events = st.builds(
    Event,
    devices,
    counts,
    st.sampled_from(EVENT_KINDS),
    st.dictionaries(st.text(max_size=10), st.none() | st.booleans() | int64 | text, max_size=4),
)


@st.composite
def commands(draw):
    kind = draw(st.sampled_from(COMMAND_KINDS))
    command_id = draw(st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True))
    if kind == "update":
        return Command(
            command_id,
            kind,
            draw(names),
            draw(st.integers(1, 999)),
            draw(text),
            "https://gw.local:8443/repo",
        )
    if kind == "rollback":
        return Command(command_id, kind, draw(names), draw(st.none() | st.integers(1, 99)))
    if kind == "campaign":
        trigger = draw(
            st.sampled_from(["margin < 0.2", "class in [1, 2] or drift", "random < 0.1"])
        )
        campaign = Campaign(draw(names), draw(names), trigger, draw(st.integers(1, 10**6)))
        return Command(command_id, kind, campaign.model, settings=campaign.settings())
    if kind == "campaign_stop":
        return Command(command_id, kind, settings={"campaign": draw(names)})
    return Command(
        command_id,
        kind,
        settings=draw(st.dictionaries(st.text(max_size=10), int64 | text, min_size=1, max_size=4)),
    )


@given(statuses, events, commands())
def test_status_event_command_round_trip(status, event, command):
    assert Status.decode(status.encode()) == status
    assert Event.decode(event.encode()) == event
    assert Command.decode(command.encode()) == command
    offline = Status.offline(status.device)
    assert Status.decode(offline.encode()) == offline


@given(st.data())
def test_malformed_payloads_raise_only_protocol_error(data):
    for decode, valid in (
        (Status.decode, Status("d", "online", 1, "v", "00ff00ff").encode()),
        (Event.decode, Event("d", 1, "started", {"a": 1}).encode()),
        (Command.decode, Command("c", "update", "m", 2, "r", "http://x").encode()),
    ):
        payload = data.draw(mutations(valid))
        with contextlib.suppress(ProtocolError):
            decode(payload)


@given(devices, st.sampled_from(["telemetry", "status", "events", "cmd"]))
def test_topics_round_trip(device, kind):
    topic = device_topic("edgefleet/site-1", device, kind)
    assert parse_device_topic(topic) == ("edgefleet/site-1", device, kind)


@pytest.mark.parametrize("topic", ["", "a/b", "p/dev/bad id/cmd", "p/dev/d/other", "dev/d/cmd"])
def test_bad_topics(topic):
    with pytest.raises(ProtocolError):
        parse_device_topic(topic)
