"""Permanent refusals by a real HTTP cloud on loopback: a batch the cloud will never take is set
aside as a dead letter after one try and the others keep flowing; a 413 halves the batch until
the parts fit; ``dead-letters resend`` sends the set-aside records again once the cloud takes
them. At every step each record is delivered, dropped and counted, or a dead letter."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt

from gateway.telemetry.sinks import MAX_ANSWER_BYTES, permanent
from protocol.telemetry import encode_batch
from protocol.topics import device_topic
from tests.gateway.support import PREFIX, make_record, wait_for

BOOT = "00112233445566aa"
REFUSED = "edgefleet_gateway_uplink_refused_records_total"


def test_which_answers_are_permanent():
    assert all(permanent(s) for s in (400, 409, 413, 415, 422))
    assert not any(permanent(s) for s in (200, 401, 403, 404, 408, 429, 500, 503))


class Device:
    def __init__(self, broker, name: str):
        self.name, self.seq, self.published = name, 0, {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.username_pw_set(*broker.login(name))
        self.client.connect("127.0.0.1", broker.config.port)
        self.client.loop_start()

    def send(self, count: int) -> None:
        records = [make_record(self.name, BOOT, s) for s in range(self.seq, self.seq + count)]
        for s, raw in enumerate(records, self.seq):
            self.published[(self.name, BOOT, s)] = raw
        self.seq += count
        topic = device_topic(PREFIX, self.name, "telemetry")
        self.client.publish(topic, encode_batch(self.name, records), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _letters(gateway) -> tuple[list[dict], dict]:
    result = gateway.cli("dead-letters", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    return answer["dead_letters"], answer["stats"]


def _set_aside(gateway, letters: list[dict]) -> set[tuple]:
    """Record ids held in the uplink's dead letters, from the gateway's database."""
    import sqlite3

    db = sqlite3.connect(gateway.config["gateway"]["data_dir"] / "gateway.db")
    ids = {e["id"] for e in letters}
    keys = set()
    for row_id, data in db.execute("SELECT id, data FROM dead_letters WHERE source = 'uplink'"):
        assert row_id in ids
        for line in bytes(data).split(b"\n"):
            record = json.loads(line)
            keys.add((record["dev"], record["boot"], record["seq"]))
    db.close()
    return keys


def test_refused_batches_are_set_aside_after_one_try_and_the_rest_flows(
    broker, cloud, make_gateway
):
    answer = b"record dev=bad: schema not accepted\n" + b"x" * (1024 * 1024)
    refusals = []

    def refuse(records):
        if any(r["dev"] == "bad" for r in records):
            refusals.append(len(records))
            return 422, answer
        return None

    cloud.refuse = refuse
    gateway = make_gateway(broker, cloud.url)  # two upload workers, the default
    bad, good = Device(broker, "bad"), Device(broker, "good")
    for wanted in (1, 2):  # two refused batches: as many as there are workers
        bad.send(10)
        wait_for(lambda w=wanted: len(refusals) >= w, 20, "the cloud refusing a batch")
    for _ in range(5):
        good.send(100)
    wait_for(lambda: len(cloud.unique()) == 500, 30, "the good records in the cloud")
    wait_for(lambda: gateway.metric("edgefleet_gateway_spool_records") == 0, 20, "spool empty")
    assert refusals == [10, 10]  # one try each
    assert gateway.metric(REFUSED) == 20

    letters, stats = _letters(gateway)
    assert [(e["source"], e["kind"], e["reason"], e["records"]) for e in letters] == [
        ("uplink", "http_422", "refused", 10),
        ("uplink", "http_422", "refused", 10),
    ]
    assert all(e["detail"].startswith("record dev=bad") for e in letters)
    assert all(len(e["detail"]) <= MAX_ANSWER_BYTES for e in letters)  # the answer is bounded
    refused_keys = [k for k, n in cloud.posts.items() if n and k not in cloud.keys]
    assert len(refused_keys) == 2 and all(cloud.posts[k] == 1 for k in refused_keys)

    # Accounting: every record is in the cloud or a dead letter, none in both, none dropped.
    published = bad.published | good.published
    held = _set_aside(gateway, letters)
    assert held == set(bad.published) and cloud.unique() == set(good.published)
    assert stats["records"] == 20 and stats["dropped_records"] == 0
    assert gateway.metric("edgefleet_gateway_spool_dropped_records_total") == 0

    cloud.refuse = None  # the cloud takes them now
    resent = gateway.cli("dead-letters", "resend", str(letters[0]["id"]))
    assert resent.returncode == 0 and "1 dead letters (10 records)" in resent.stdout, resent
    wait_for(lambda: len(cloud.unique()) == 510, 20, "the first letter delivered")
    assert gateway.cli("dead-letters", "resend").returncode == 0  # the rest
    wait_for(lambda: cloud.unique() == set(published), 20, "every record in the cloud")
    letters, stats = _letters(gateway)
    assert letters == [] and stats["records"] == 0
    assert all(cloud.records[key] == raw for key, raw in published.items())

    missing = gateway.cli("dead-letters", "resend", "999")
    assert missing.returncode == 2 and "no dead letter 999" in missing.stderr
    assert cloud.violations == []
    assert gateway.stop() == 0
    bad.close()
    good.close()


def test_a_413_splits_the_batch_and_the_parts_that_fit_are_delivered(broker, cloud, make_gateway):
    """The cloud takes at most 8 records a request, refuses record 13 (422) and record 29 even
    alone (413)."""

    def refuse(records):
        seqs = {r["seq"] for r in records}
        if len(records) > 8 or 29 in seqs:
            return 413, b"too large"
        if 13 in seqs:
            return 422, b"record 13 is not valid"
        return None

    cloud.refuse = refuse
    gateway = make_gateway(broker, cloud.url)
    device = Device(broker, "cam-1")
    device.send(40)  # one message: one spool row, one batch
    wait_for(lambda: gateway.metric("edgefleet_gateway_spool_records") == 0, 30, "spool empty")

    letters, _ = _letters(gateway)
    held = _set_aside(gateway, letters)
    assert sorted((e["kind"], e["records"]) for e in letters) == [("http_413", 1), ("http_422", 5)]
    assert (("cam-1", BOOT, 13) in held) and (("cam-1", BOOT, 29) in held) and len(held) == 6
    assert cloud.unique() == set(device.published) - held  # 34 records delivered in parts
    assert gateway.metric("edgefleet_gateway_uplink_splits_total") >= 3
    assert gateway.metric("edgefleet_gateway_uplink_records_total") == 34
    assert max(cloud.posts.values()) == 1  # no part was sent twice
    assert gateway.stop() == 0
    device.close()
