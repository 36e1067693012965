"""The agent as systemd runs it: READY, STATUS and WATCHDOG notifications, a clean exit on
SIGTERM with the spool intact, and a bad config refused with one line and exit code 2."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from protocol.topics import Status
from tests.agent.agent_support import (
    REPO,
    AgentProcess,
    Collector,
    SpoolFile,
    agent_config,
    wait_for,
    write_config,
)


class NotifySocket:
    """What systemd listens on for ``sd_notify`` datagrams."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def has(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        return [m for m in self.poll() if key in m and (value is None or m[key] == value)]


def test_sigterm_clean_exit_with_systemd_notify(tmp_path, broker, models):
    collector = Collector(broker.config.port)
    notify = NotifySocket(tmp_path / "notify")
    config = write_config(
        tmp_path / "agent.toml", agent_config(tmp_path, broker, models("kws_f32_v1"))
    )
    agent = AgentProcess(config, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"})
    wait_for(lambda: notify.has("READY", "1"), 20, "READY=1")
    assert any("STATUS" in m for m in notify.has("READY"))
    wait_for(lambda: len(notify.has("WATCHDOG", "1")) >= 3, 10, "watchdog pings")
    wait_for(lambda: len(collector.data.records) >= 100, 20, "records delivered")
    online = wait_for(lambda: collector.status("dev1"), 5, "status")
    assert online.state == "online" and online.model.name == "kws_f32_v1"

    start = time.monotonic()
    assert agent.terminate(timeout=10) == 0
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"SIGTERM took {elapsed:.1f}s"
    assert notify.has("STOPPING", "1")
    state = SpoolFile.read(tmp_path / "state-dev1" / "spool.db")
    assert state.integrity == "ok"
    assert state.produced == state.next_seq > 0
    assert (
        not (tmp_path / "state-dev1" / "spool.db-wal").exists()
        or (tmp_path / "state-dev1" / "spool.db-wal").stat().st_size == 0
    ), "the WAL is checkpointed at a clean stop"
    final = wait_for(
        lambda: collector.status("dev1").state == "offline" and collector.status("dev1"),
        5,
        "offline status",
    )
    assert final == Status.offline("dev1")
    log = agent.log()
    assert '"mqtt_disconnected_cleanly"' in log and "Traceback" not in log
    collector.close()


def test_last_will_marks_a_killed_agent_offline(tmp_path, broker, models):
    collector = Collector(broker.config.port)
    config = write_config(
        tmp_path / "agent.toml",
        agent_config(tmp_path, broker, models("kws_f32_v1"), mqtt={"keepalive_s": 5}),
    )
    agent = AgentProcess(config)
    wait_for(lambda: (s := collector.status("dev1")) and s.state == "online", 20, "online")
    agent.kill()
    wait_for(lambda: collector.status("dev1").state == "offline", 20, "the last will")
    collector.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[device]\nid = "d1"\nsite = "s"\n[mqtt]\nurl = "http://x"\n[state]\ndir = "s"\n'
            '[model]\npath = "m.tflite"\n',
            "key mqtt.url: must start with mqtt:// or mqtts://",
        ),
        ('[device]\nid = "bad id"\n', "key device.id: must match"),
    ],
)
def test_bad_config_one_line_exit_2(tmp_path, text, expected):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edgefleet: error: config {path}: key ")
    assert expected in lines[0]


def test_sigterm_while_the_broker_is_down(tmp_path, broker, models):
    config = write_config(
        tmp_path / "agent.toml", agent_config(tmp_path, broker, models("kws_f32_v1"))
    )
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    broker.stop()
    wait_for(lambda: "mqtt_retry" in agent.log(), 20, "a reconnect attempt")
    start = time.monotonic()
    assert agent.terminate(timeout=10) == 0
    assert time.monotonic() - start < 5.0
    state = SpoolFile.read(tmp_path / "state-dev1" / "spool.db")
    assert state.integrity == "ok" and len(state.left) > 0, "undelivered records stay spooled"
