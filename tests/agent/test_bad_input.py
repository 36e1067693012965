"""Bad input is counted, logged once per reason, and the agent keeps running: malformed and
oversize commands, sensor lines that do not parse, a model file that is not TFLite."""

from __future__ import annotations

import os
import tty

from protocol.topics import MAX_CMD_BYTES, Command
from tests.agent.agent_support import (
    AgentProcess,
    Collector,
    agent_config,
    wait_for,
    write_config,
)


def counter(collector: Collector, name: str) -> int:
    status = collector.status("dev1")
    return int(status.counters.get(name, 0)) if status and status.state == "online" else -1


def test_malformed_and_oversize_commands(tmp_path, broker, models):
    collector = Collector(broker.config.port)
    config = write_config(
        tmp_path / "agent.toml", agent_config(tmp_path, broker, models("kws_f32_v1"))
    )
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: counter(collector, "inferences") > 0, 20, "a status")
    bad = [
        b"",
        b"\xff\xfe not json",
        b"[1, 2, 3]",
        b'{"schema": 99, "id": "a", "kind": "update"}',
        b'{"schema": 1, "id": "a", "kind": "format-disk"}',
        b'{"schema": 1, "id": "a", "kind": "update", "model": "m", "version": NaN}',
        b'{"schema": 1, "id": "a", "kind": "update", "model": "m", "version": 2}',
        b"{" * 100_000,
        b'{"schema": 1, "pad": "' + b"x" * (MAX_CMD_BYTES + 10) + b'"}',
    ]
    good = Command("c1", "rollback", model="kws_f32_v1").encode()
    # through the collector's own session: the broker makes the user name the client id, so a
    # second connection as the gateway's user would take that session over
    for payload in [*bad, *bad, good]:
        collector.publish("edgefleet/site1/dev/dev1/cmd", payload)
    wait_for(lambda: counter(collector, "commands") == 1, 20, "the good command")
    wait_for(lambda: counter(collector, "bad_command") == 2 * len(bad), 20, "bad commands counted")
    assert agent.proc.poll() is None
    rejected = wait_for(lambda: collector.events("command_rejected"), 10, "command event")
    assert rejected[0].detail["id"] == "c1"
    log = agent.log()
    # each distinct reason once; the two oversize payloads share theirs
    assert log.count('"bad_input"') == len(bad) - 1
    assert log.count('"oversize command"') == 1
    before = len(collector.data.records)
    wait_for(lambda: len(collector.data.records) > before + 50, 20, "telemetry keeps flowing")
    assert agent.terminate() == 0
    collector.close()


def test_model_file_that_is_not_tflite(tmp_path, broker):
    collector = Collector(broker.config.port)
    model = tmp_path / "broken.tflite"
    model.write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 10)
    config = write_config(tmp_path / "agent.toml", agent_config(tmp_path, broker, model))
    agent = AgentProcess(config)
    status = wait_for(
        lambda: (s := collector.status("dev1")) and s.state == "online" and s, 20, "status"
    )
    assert status.health == "model_error"
    assert status.counters["bad_model"] == 1
    assert status.model is None
    event = wait_for(lambda: collector.events("model_error"), 10, "model_error event")
    assert "TFL3" in event[0].detail["reason"]
    assert agent.proc.poll() is None, "the agent stays up without a model"
    assert agent.terminate() == 0
    collector.close()


def test_serial_sensor_lines(tmp_path, broker, models):
    collector = Collector(broker.config.port)
    controller, device = os.openpty()
    tty.setraw(device)
    port = os.ttyname(device)
    tables = agent_config(
        tmp_path,
        broker,
        models("kws_f32_v1"),
        source={"kind": "serial", "port": port, "baud": 115200, "max_line_bytes": 8192},
    )
    config = write_config(tmp_path / "agent.toml", tables)
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    good = ",".join(f"{(i % 7) / 7:.3f}" for i in range(490)).encode() + b"\n"
    bad = [b"1,2,3\n", b"nan," * 489 + b"nan\n", b"hello world\n", b"9" * 9000 + b"\n"]
    for _ in range(3):
        for line in [good, *bad, good]:
            os.write(controller, line)
    wait_for(lambda: len(collector.data.records) == 6, 20, "six inferences")
    wait_for(lambda: counter(collector, "bad_sensor") == 3 * len(bad), 20, "bad lines counted")
    assert {r.body.model for r in collector.records()} == {"kws_f32_v1"}
    assert agent.terminate() == 0
    os.close(controller)
    os.close(device)
    collector.close()
