"""The running agent imports only what its configuration uses: a real ``edgefleet agent run``
against a real mosquitto lists its modules once it publishes, and none of the gateway's, the
update work's, a terminal's or TLS's libraries are among them; and it keeps glibc's malloc to two
arenas."""

from __future__ import annotations

import platform
import signal
import subprocess
import sys

import numpy as np
import pytest

from agent import lean
from edgefleet import cli
from tests.agent.agent_support import (
    REPO,
    AgentProcess,
    Collector,
    agent_config,
    wait_for,
    write_config,
)

# Installed through PYTHONPATH: on SIGUSR1 the process writes its module names to $MODULES_OUT.
SITECUSTOMIZE = """
import os, signal, sys
def _dump(*_):
    with open(os.environ["MODULES_OUT"] + ".tmp", "w") as out:
        out.write("\\n".join(n for n, m in list(sys.modules.items()) if m is not None))
    os.replace(os.environ["MODULES_OUT"] + ".tmp", os.environ["MODULES_OUT"])
signal.signal(signal.SIGUSR1, _dump)
"""

# What a device agent without [[mcu]], [capture] campaigns or mqtts must not carry.
NEVER = (
    "gateway",  # the other side
    "cloud",
    "firmware_sim",
    "rich",  # terminal formatting
    "pygments",
    "tomli_w",  # writing TOML
    "aiohttp",
    "prometheus_client",
    "tuf",  # the update work: a child process
    "securesystemslib",
    "cryptography",
    "urllib3",
    "bsdiff4",
    "agent.trust",
    "agent.updater.cycle",
    "serial",  # MCUs and serial sources
    "agent.mcu.host",
    "numpy.random",  # only a synthetic source or a campaign drawing ``random``
    "ssl",  # TLS: only with an mqtts:// broker (agent.lean)
    "_ssl",
    "_hashlib",  # OpenSSL's libcrypto through hashlib
)


def running_modules(tmp_path, broker, models) -> set[str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    np.save(tmp_path / "inputs.npy", np.zeros((8, 49, 10), np.float32))
    tables = agent_config(tmp_path, broker, models("kws_f32_v1"))
    tables["source"] = {"kind": "replay", "path": tmp_path / "inputs.npy", "loop": True}
    tables["inference"] = {"rate_hz": 100.0}
    out = tmp_path / "modules.txt"
    collector = Collector(broker.config.port)
    agent = AgentProcess(
        write_config(tmp_path / "agent.toml", tables),
        env={"PYTHONPATH": str(site), "MODULES_OUT": str(out)},
    )
    try:
        wait_for(lambda: len(collector.data.records) >= 50, 30, "telemetry from the agent")
        agent.proc.send_signal(signal.SIGUSR1)
        wait_for(out.exists, 10, "the agent's module list")
        assert agent.terminate() == 0
    finally:
        collector.close()
    return set(out.read_text().split())


def test_a_running_agent_loads_only_what_its_configuration_uses(tmp_path, broker, models):
    modules = running_modules(tmp_path, broker, models)
    assert {"agent.daemon", "aiomqtt", "ai_edge_litert"} <= modules
    loaded = sorted(
        name for name in modules for never in NEVER if name == never or name.startswith(never + ".")
    )
    assert loaded == []


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["agent", "run"], "agent.commands"),
        (["--log-level", "debug", "agent", "run"], "agent.commands"),
        (["--log-format=json", "rollout", "status"], "gateway.rollouts.commands"),
        (["demo"], "firmware_sim.fleet.commands"),
    ],
)
def test_a_command_builds_only_its_own_parser(argv, module):
    assert cli.command_modules(argv) == (module,)


@pytest.mark.parametrize("argv", [[], ["--help"], ["no-such-command"], ["--log-level", "info"]])
def test_help_and_mistakes_get_the_whole_parser(argv):
    assert cli.command_modules(argv) == cli.COMMAND_MODULES


def test_every_command_word_is_registered_by_its_module():
    parser = cli.build_parser()
    words = next(a for a in parser._actions if a.dest == "command").choices
    assert set(words) == set(cli.COMMANDS)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ('[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n', True),
        ('[mqtt]\nurl = "mqtts://broker:8883"\n', False),
        ('[mqtt]\nurl = "MQTT://broker"\n', True),  # urlsplit lowers the scheme
        ("[mqtt]\nurl = 1883\n", False),
        ('[device]\nid = "d"\n', False),
        ("[mqtt\n", False),
        ('mqtt = "mqtt://x"\n', False),
    ],
)
def test_only_an_mqtt_url_leaves_tls_out(tmp_path, text, plain):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert lean.plain_mqtt(path) is plain


def test_a_missing_configuration_keeps_tls(tmp_path):
    assert lean.plain_mqtt(tmp_path / "absent.toml") is False


# Threads that each allocate while the others hold their arena, then glibc's own count of them.
ARENAS = """
import ctypes, sys, threading
from edgefleet import memory
if sys.argv[1] == "limited":
    assert memory.limit_arenas(2)
barrier = threading.Barrier(6)
def work():
    barrier.wait()
    kept = [bytearray(256) for _ in range(2000)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize(("how", "most"), [("limited", 2), ("default", 99)])
def test_the_agent_limits_malloc_arenas(how, most):
    done = subprocess.run(
        [sys.executable, "-c", ARENAS, how], cwd=REPO, capture_output=True, text=True, check=True
    )
    arenas = done.stderr.count("Arena ")
    assert 1 <= arenas <= most and (how == "limited" or arenas > 2)


# paho without TLS, reading a live plain connection: CONNACK, then nothing to read yet.
PAHO_READS = """
import sys, time
from agent import lean
assert lean.leave_out_tls()
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sys.argv[1])
client.username_pw_set(sys.argv[1], sys.argv[2])
client.connect("127.0.0.1", int(sys.argv[3]))
codes = []
for _ in range(5):
    codes.append(client.loop_read())
    time.sleep(0.05)
print(client.is_connected(), sorted({int(code) for code in codes}))
"""


def test_paho_reads_a_plain_connection_without_tls(broker):
    """An empty non-blocking read is "try again", as with TLS loaded (paho names ssl's errors
    in the except clauses around every read)."""
    user, password = broker.login("probe")
    done = subprocess.run(
        [sys.executable, "-c", PAHO_READS, user, password, str(broker.config.port)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[0]"]
