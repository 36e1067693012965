"""Labels from an application on the device: through the agent's unix socket to a telemetry
record on the broker, in order with the inferences; bad lines are answered and counted, and the
agent goes on."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.labels import LabelError, parse_line
from protocol.telemetry import Label
from tests.agent.agent_support import AgentProcess, Collector, agent_config, wait_for, write_config

pytestmark = pytest.mark.slow


def ask(path, *lines: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall(b"".join(line + b"\n" for line in lines))
        client.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_a_label_travels_as_telemetry_and_bad_lines_are_answered(tmp_path, broker, models):
    collector = Collector(broker.config.port)
    sock = tmp_path / "labels.sock"
    tables = agent_config(tmp_path, broker, models("kws_f32_v1"), labels={"socket": str(sock)})
    agent = AgentProcess(write_config(tmp_path / "agent.toml", tables))
    try:
        agent.wait_logged("labels_listening")
        first = wait_for(lambda: next(iter(collector.data.records), None), 20, "a record")
        answers = ask(
            sock,
            json.dumps({"id": first, "label": 2, "labeller": "user"}).encode(),
            b'{"id": "dev2:abcdef12:1", "label": 1}',
            b'{"id": "' + first.encode() + b'", "label": 9999}',
            b"not json",
            b"x" * 5000,
        )
        assert "record" in answers[0], answers
        assert "not this one" in answers[1]["error"]
        assert "class index" in answers[2]["error"]
        assert answers[3] == {"error": "not a JSON object"}
        assert answers[4] == {"error": "line too long"}
        key = answers[0]["record"]
        record = wait_for(lambda: collector.data.records.get(key), 20, "the label record")
        assert isinstance(record.body, Label)
        assert (record.body.target, record.body.label, record.body.labeller) == (first, 2, "user")
        assert (record.body.model, record.body.version) == ("kws_f32_v1", 1)
        assert ask(sock, json.dumps({"id": first, "label": 1}).encode())[0]["record"] != key
        status = wait_for(lambda: collector.status("dev1"), 10, "status")
        wait_for(lambda: collector.status("dev1").counters.get("bad_label", 0) >= 4, 10,
                 "bad labels counted")  # fmt: skip
        assert status.state == "online"
        assert agent.terminate() == 0
        assert not sock.exists()
    finally:
        agent.kill()
        collector.close()


@given(st.binary(max_size=300))
def test_any_line_is_a_label_or_one_error(line: bytes) -> None:
    try:
        target, label, _ = parse_line(line, "dev1")
    except LabelError as exc:
        assert "\n" not in str(exc)
        return
    assert target.startswith("dev1:") and label >= 0


def test_a_label_for_a_record_of_this_device_parses() -> None:
    line = b'{"id": "dev1:0011223344556677:12", "label": 3}'
    assert parse_line(line, "dev1") == ("dev1:0011223344556677:12", 3, "device")
