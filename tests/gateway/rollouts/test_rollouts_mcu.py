"""Rollouts of MCU images: real mosquitto, a real gateway serving the signed images, a real agent
verifying them with TUF and flashing them into ``edgefleet mcu-sim`` processes (on a socket and
on a pty). Power cuts at flash operations during the upload and during the swap, and an image
signed with a key the MCU does not trust."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from agent.mcu.host import McuPort, query
from edgefleet.models import model_path
from firmware_sim.broker import free_port
from firmware_sim.images import keygen, sign
from firmware_sim.layout import Layout
from gateway.releases.repository import Repository
from protocol.serial.messages import SlotFlag
from tests.agent.agent_support import AgentProcess, Collector, agent_config, write_config
from tests.gateway.rollouts.rollout_support import cli, import_release
from tests.gateway.support import EDGEFLEET, wait_for

BAUD = 921600
LAYOUT = Layout()  # what mcu-sim uses by default: 16 sectors of 4 KiB per slot


class Images:
    """MCUboot images of the bundled int8 models, signed once with the real imgtool."""

    def __init__(self, root: Path) -> None:
        self.key = keygen(root / "key.pem")
        other = keygen(root / "other.pem")
        slot = LAYOUT.slot_size
        self.paths: dict[str, Path] = {}
        for name, key, model, version in (
            ("v1", self.key, "kws_int8_v1", "1.0.0"),
            ("v2", self.key, "kws_int8_v2_full", "2.0.0"),
            ("v3", self.key, "kws_int8_v2_head", "3.0.0"),
            ("foreign", other, "kws_int8_v2_head", "3.0.0"),
        ):
            self.paths[name] = root / f"{name}.bin"
            sign(key, model_path(model), self.paths[name], version, slot)

    def data(self, name: str) -> bytes:
        return self.paths[name].read_bytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Images:
    return Images(tmp_path_factory.mktemp("mcu-images"))


class McuSim:
    """``edgefleet mcu-sim`` as a child process, factory-programmed with v1."""

    def __init__(self, workdir: Path, images: Images, socket: bool = True) -> None:
        workdir.mkdir(parents=True)
        self.fault_file = workdir / "power-cut"
        self.log_path = workdir / "mcu-sim.log"
        command = [
            str(EDGEFLEET), "mcu-sim", "--flash", str(workdir / "flash.bin"),
            "--key", str(images.key), "--factory", str(images.paths["v1"]),
            "--baud", str(BAUD), "--fault-file", str(self.fault_file),
            *(["--socket"] if socket else []),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        self.port = self.proc.stdout.readline().decode().strip()
        assert self.port, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sims():
    started: list[McuSim] = []
    yield started
    for sim in started:
        sim.stop()


def start_fleet(tmp_path, broker, make_gateway, mcus: dict[str, McuSim], operator: Repository):
    """A gateway serving ``operator``'s releases and one agent with ``mcus`` attached."""
    listen = f"127.0.0.1:{free_port()}"
    gateway = make_gateway(
        broker,
        None,
        repository={"dir": tmp_path / "served", "keys": operator.keys.online, "listen": listen},
        rollouts={"tick_s": 0.2},
    )
    import_release(gateway, operator)
    tables = agent_config(tmp_path, broker, model_path("kws_f32_v1"))
    tables["inference"] = {"rate_hz": 20.0}
    tables["update"] = {"trusted_root": operator.metadata_dir / "1.root.json"}
    tables["mcu"] = [{"name": n, "port": s.port, "baud": BAUD} for n, s in mcus.items()]
    agent = AgentProcess(write_config(tmp_path / "agent.toml", tables))
    for name in mcus:
        wait_mcu(gateway.config_path, name, "1.0.0+0", "ok")
    return gateway.config_path, agent


def mcu_row(config: Path, name: str) -> dict | None:
    done = cli(config, "gateway", "devices", "--json")
    rows = json.loads(done.stdout) if done.returncode == 0 else []
    mcus = [m for row in rows if row["state"] == "online" for m in row["mcus"]]
    return next((m for m in mcus if m["name"] == name), None)


def wait_mcu(config: Path, name: str, version: str, state: str) -> None:
    wanted = {"name": name, "version": version, "state": state}
    wait_for(lambda: mcu_row(config, name) == wanted, 30, f"{wanted} in the inventory", 0.3)


def roll_out(config: Path, name: str, version: int) -> tuple[int, dict]:
    done = cli(
        config, "rollout", "start", "--model", name, "--version", str(version),
        "--stages", "100", "--soak", "0", "--wait", "--json", timeout=90,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout)


def test_rollout_reaches_the_mcu_and_an_untrusted_image_is_refused_by_it(
    tmp_path, broker, make_gateway, images, sims
):
    sims += [McuSim(tmp_path / "sensor", images), McuSim(tmp_path / "door", images, socket=False)]
    operator = Repository.init(tmp_path / "operator")
    operator.add_image("sensor", 2, images.data("v2"))
    operator.add_image("sensor", 3, images.data("foreign"))  # released, but not by the MCU's key
    collector = Collector(broker.config.port)
    config, agent = start_fleet(
        tmp_path, broker, make_gateway, {"sensor": sims[0], "door": sims[1]}, operator
    )

    code, done = roll_out(config, "sensor", 2)
    assert code == 0, (done, agent.log()[-3000:])
    assert (done["state"], done["committed"], done["failed"]) == ("completed", 1, 0)
    wait_mcu(config, "sensor", "2.0.0+0", "ok")
    assert mcu_row(config, "door") == {"name": "door", "version": "1.0.0+0", "state": "ok"}
    kinds = [e.kind for e in collector.data.events if e.detail.get("mcu") == "sensor"]
    assert kinds == ["update_offered", "update_downloaded", "update_committed"], kinds

    code, paused = roll_out(config, "sensor", 3)
    assert code == 1 and (paused["state"], paused["failed"]) == ("paused", 1), paused
    failed = wait_for(lambda: collector.events("update_failed"), 10, "the failure event")
    assert failed[0].detail["rollout"] == paused["id"]
    assert "signature refused" in failed[0].detail["reason"]
    wait_mcu(config, "sensor", "2.0.0+0", "failed")
    info = query(McuPort(sims[0].port, BAUD))
    assert info.primary.version_text == "2.0.0+0" and info.primary.flags & SlotFlag.CONFIRMED
    collector.close()


def test_power_cuts_during_upload_and_swap_end_on_the_new_image(
    tmp_path, broker, make_gateway, images, sims
):
    sims.append(McuSim(tmp_path / "sensor", images))
    sim = sims[0]
    operator = Repository.init(tmp_path / "operator")
    operator.add_image("sensor", 2, images.data("v2"))
    operator.add_image("sensor", 3, images.data("v3"))
    config, agent = start_fleet(tmp_path, broker, make_gateway, {"sensor": sim}, operator)

    # Flash operations of an upload: erase the trailer, write the upload record, then erase,
    # write and flag each sector. Cut half way through erasing the third sector.
    sim.fault_file.write_text("9 torn")
    code, done = roll_out(config, "sensor", 2)
    assert code == 0 and done["committed"] == 1, (done, agent.log()[-3000:], sim.log())
    assert not sim.fault_file.exists()
    assert '"booted": "1.0.0+0"' in sim.log()  # the cut left the MCU on its verified image
    wait_mcu(config, "sensor", "2.0.0+0", "ok")
    assert "mcu_update_retry" in agent.log()
    assert '"resumed_from": 8192' in agent.log()  # the two flagged sectors were not sent again

    # After the upload (2 + 3 per sector) and the test request (1), the bootloader's swap
    # erases and writes both trailers (3), then copies each sector in three steps of an erase,
    # a write and a flag. Cut in the middle of the first sector's copy.
    sectors = math.ceil(len(images.data("v3")) / LAYOUT.sector_size)
    sim.fault_file.write_text(f"{2 + 3 * sectors + 1 + 3 + 4} torn")
    code, done = roll_out(config, "sensor", 3)
    assert code == 0 and done["committed"] == 1, (done, agent.log()[-3000:], sim.log())
    assert not sim.fault_file.exists()
    assert '"booted": "3.0.0+0"' in sim.log()  # the next boot finished the swap: on trial
    wait_mcu(config, "sensor", "3.0.0+0", "ok")
    info = query(McuPort(sim.port, BAUD))
    assert info.primary.version_text == "3.0.0+0" and info.primary.flags & SlotFlag.CONFIRMED
