"""Campaigns and curation through a real gateway process, a real mosquitto and devices played by
paho clients: the operator starts a campaign with the CLI, the devices running its model receive
it, samples arrive on their own topic, are counted and curated, the campaign ends at its total
and the devices are told; summaries of every record reach the cloud while curation keeps most
raw records home."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from protocol.capture import Campaign
from protocol.telemetry import Record, RecordId, Sample, Tensor, encode_batch
from protocol.topics import Command, ModelInfo, Status, device_topic
from tests.gateway.support import EDGEFLEET, PREFIX, make_record, wait_for

CURATION = {
    "default": "drop",
    "summary_window_s": 1,
    "rule": [
        {"name": "hard", "stream": "samples", "when": "margin < 0.2", "action": "keep"},
        {"name": "tenth", "stream": "telemetry", "action": "sample", "every": 10},
    ],
}


class Device:
    """A device as the gateway sees it: retained status with its model, commands received,
    batches published (QoS 1, waited for)."""

    def __init__(self, broker, name: str, model: str):
        self.name, self.commands = name, []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.username_pw_set(*broker.login(name))
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(device_topic(PREFIX, name, "cmd"), 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.commands.append(Command.decode(m.payload))
        self.client.connect("127.0.0.1", broker.config.port)
        self.client.loop_start()
        assert subscribed.wait(10)
        status = Status(name, "online", 1, model=ModelInfo(model, 1, "0" * 64))
        self.publish("status", status.encode(), retain=True)

    def publish(self, kind: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(device_topic(PREFIX, self.name, kind), payload, 1, retain)
        info.wait_for_publish(10)

    def kinds(self) -> list[str]:
        return [c.kind for c in self.commands]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sample(device: str, seq: int, campaign: str, margin: float) -> bytes:
    scores = (0.5, 0.5 - margin, 0.0, 0.0)
    body = Sample("kws", 1, campaign, "margin < 0.3", scores, False, Tensor("int8", (8,), bytes(8)))
    return Record(RecordId(device, "cd" * 8, seq), 1_700_000_000_000 + seq, body).encode()


def campaign(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EDGEFLEET), "campaign", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def outbox(gateway) -> list[dict]:
    lines = []
    for path in sorted((gateway.workdir / "data" / "outbox").glob("*.ndjson.gz")):
        lines += [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    return lines


def test_a_campaign_reaches_its_devices_counts_samples_and_ends_at_its_total(broker, make_gateway):
    gateway = make_gateway(broker, None, curation=CURATION, campaigns={"tick_s": 0.2})
    kws = [Device(broker, f"dev-{i}", "kws") for i in range(2)]
    other = Device(broker, "dev-vision", "vision")
    config = gateway.config_path

    refused = campaign(config, "start", "bad", "--model", "kws", "--trigger", "margin << 1")
    assert refused.returncode != 0 and "--trigger" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    started = campaign(
        config, "start", "hard", "--model", "kws", "--trigger", "margin < 0.3",
        "--per-device", "5", "--total", "8", "--json",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["state"] == "running"
    for device in kws:
        wait_for(lambda d=device: "campaign" in d.kinds(), 20, f"{device.name} to be asked")
        sent = device.commands[0]
        assert Campaign.from_settings(sent.model, sent.settings).per_device == 5
    assert other.kinds() == []  # it runs another model

    duplicate = campaign(config, "start", "hard", "--model", "kws", "--trigger", "drift")
    assert duplicate.returncode != 0 and "exists" in duplicate.stderr

    # Samples arrive (half of them easy, which curation keeps home), with telemetry.
    for device in kws:
        records = [sample(device.name, i, "hard", 0.1 if i % 2 else 0.25) for i in range(4)]
        device.publish("samples", encode_batch(device.name, records))
        telemetry = [make_record(device.name, "ab" * 8, s) for s in range(50)]
        device.publish("telemetry", encode_batch(device.name, telemetry))
    for device in kws:
        wait_for(lambda d=device: "campaign_stop" in d.kinds(), 20, f"{device.name} told to stop")
    status = json.loads(campaign(config, "status", "hard", "--json").stdout)
    assert (status["state"], status["reason"], status["received"]) == ("ended", "total", 8)
    assert {d: row["received"] for d, row in status["per_device"].items()} == {
        "dev-0": 4,
        "dev-1": 4,
    }
    listing = campaign(config, "list")
    assert "hard" in listing.stdout and "ended" in listing.stdout

    # What reached the cloud: the hard samples, one telemetry record in ten, and summaries.
    def arrived() -> list[dict]:
        lines = outbox(gateway)
        return lines if sum(r["kind"] == "summary" for r in lines) >= 2 else []

    lines = wait_for(arrived, 20, "the summaries to reach the cloud")
    samples = [r for r in lines if r["kind"] == "sample"]
    assert sorted((r["dev"], r["seq"]) for r in samples) == [
        (d, s) for d in ("dev-0", "dev-1") for s in (1, 3)
    ]
    assert sum(r["kind"] == "inference" for r in lines) == 10  # 2 devices x 50 / 10
    summaries = [r for r in lines if r["kind"] == "summary"]
    assert sorted((s["dev"], s["records"], s["samples"]) for s in summaries) == [
        ("dev-0", 50, 4),
        ("dev-1", 50, 4),
    ]
    traffic = json.loads(gateway.cli("status", "--json").stdout)["traffic"]
    assert traffic["curated_out"] == {"telemetry": {"tenth": 90}, "samples": {"default": 4}}
    assert 0 < traffic["cloud_bytes"] < traffic["device_bytes"]
    shown = gateway.cli("status")
    assert "records in from devices" in shown.stdout, shown.stdout
    metrics = gateway.metrics()
    assert (
        metrics["edgefleet_gateway_curation_dropped_records_total{rule=tenth,stream=telemetry}"]
        == 90
    )
    assert (
        metrics["edgefleet_gateway_curation_dropped_records_total{rule=default,stream=samples}"]
        == 4
    )
    stopped = campaign(config, "stop", "hard")
    assert stopped.returncode == 0 and "ended (total)" in stopped.stdout
    for device in (*kws, other):
        device.close()
    assert gateway.stop() == 0
