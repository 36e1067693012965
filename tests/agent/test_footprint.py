"""The running agent imports only what its configuration uses: a real ``edgefleet agent run``
against a real mosquitto lists its modules once it publishes, and none of the gateway's, the
update work's or a terminal's libraries are among them."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from edgefleet import cli
from tests.agent.agent_support import AgentProcess, Collector, agent_config, wait_for, write_config

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
