"""The agent's MCU path over SMP: ``[[mcu]] protocol = "smp"``, the worker's query and its
install with retries against ``edgefleet mcu-sim --protocol smp`` on a pty, through a power cut
in the middle of the upload (the edgefleet-protocol twin is in test_fleet_path.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.config import load
from agent.mcu.host import McuPort, open_device
from agent.mcu.updater import Mcu
from agent.mcu.worker import install_with_retries
from edgefleet.errors import UserError
from protocol.mcu_image import McuImageMeta
from tests.mcu.smp_support import SmpSim
from tests.mcu.test_fleet_path import BASE

BAUD = 921600


def test_mcu_protocol_key(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + '[[mcu]]\nname = "door"\nport = "/dev/ttyACM0"\nprotocol = "smp"\n')
    (mcu,) = load(path).mcus
    assert mcu.protocol == "smp"
    assert Mcu(mcu).worker_args()[-2:] == ["--protocol", "smp"]
    path.write_text(BASE + '[[mcu]]\nname = "door"\nport = "p"\nprotocol = "mcumgr"\n')
    with pytest.raises(UserError, match=r"key mcu\[0\]\.protocol: must be 'edgefleet' or 'smp'"):
        load(path)


@pytest.fixture
def sim(tmp_path, images):
    started = SmpSim(tmp_path / "sim", images, BAUD)
    yield started
    started.stop()


def worker(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "agent.mcu.worker", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_worker_query_and_an_install_through_a_power_cut(sim, images):
    line = worker("--port", sim.port, "--protocol", "smp", "query")
    assert line == {"version": "1.0.0+0", "state": "ok"}
    port = McuPort(sim.port, 115200, timeout=0.5, protocol="smp")
    meta = McuImageMeta("door", 2, "2.0.0+0", len(images.v2))
    steps: list[dict] = []
    sim.fault_file.write_text("12")  # a few sectors into the upload
    result = install_with_retries(port, images.v2, meta, "door/2.bin", steps.append)
    assert result["result"] == "committed", (result, steps, sim.log())
    assert result["version"] == "2.0.0+0" and steps and steps[0]["step"] == "retry"
    assert result["resumed_from"] > 0  # the second attempt resumed from the MCU's offset
    assert not sim.fault_file.exists()
    assert worker("--port", sim.port, "--protocol", "smp", "query")["version"] == "2.0.0+0"
    again = install_with_retries(port, images.v1, McuImageMeta("door", 1, "1.0.0+0", 1), "", print)
    assert again["result"] == "refused" and again["reason"].startswith("downgrade")
    assert open_device(port).query().primary.version == (2, 0, 0, 0)
