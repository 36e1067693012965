"""The pieces of an MCU update from a rollout, without a broker: the ``[[mcu]]`` config, the
status field, the agent's and the gateway's decisions, the worker's rules, and a power cut
asked for through a fault file on a real pty, survived by the worker's retries."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from agent.config import load
from agent.mcu.errors import LinkLost, NoAnswer, Refusal, WrongProtocol
from agent.mcu.host import McuPort, query
from agent.mcu.updater import decide
from agent.mcu.worker import downgrade, install_with_retries, kept_version, transient
from edgefleet.errors import UserError
from firmware_sim.fault_file import FaultFile, parse
from firmware_sim.mcu import SimulatedMcu
from firmware_sim.uart import UartServer
from gateway.devices.inventory import Device
from gateway.rollouts.service import mcu_candidates
from protocol.mcu_image import McuImageMeta
from protocol.serial.messages import ErrorCode, InfoReply, ModelState, SlotFlag, SlotInfo
from protocol.serial.messages import SlotState as S
from protocol.topics import Command, McuInfo, ProtocolError, Status
from tests.mcu.mcu_support import LAYOUT, factory_flash, mcu_config

BASE = """
[device]
id = "d1"
site = "s1"
[mqtt]
url = "mqtt://broker.local"
[state]
dir = "state"
[model]
path = "model.tflite"
"""


def test_mcu_tables_parse_with_defaults(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        BASE + '[[mcu]]\nname = "sensor"\nport = "/dev/ttyACM0"\n'
        '[[mcu]]\nname = "door"\nport = "socket://127.0.0.1:5000"\nbaud = 921600\n'
        "timeout_s = 0.5\n"
    )
    mcus = load(path).mcus
    assert [(m.name, m.port, m.baud, m.timeout_s) for m in mcus] == [
        ("sensor", "/dev/ttyACM0", 115200, 1.0),
        ("door", "socket://127.0.0.1:5000", 921600, 0.5),
    ]


def test_mcu_compress_key_reaches_the_worker(tmp_path):
    from agent.mcu.updater import Mcu
    from agent.mcu.worker import build_parser

    path = tmp_path / "agent.toml"
    path.write_text(
        BASE + '[[mcu]]\nname = "a"\nport = "p"\n[[mcu]]\nname = "b"\nport = "q"\n'
        "compress = false\n"
    )
    on, off = load(path).mcus
    assert (on.compress, off.compress) == (True, False)
    for mcu, expected in ((on, True), (off, False)):
        args = build_parser().parse_args([*Mcu(mcu).worker_args(), "query"])
        assert McuPort(args.port, compress=args.compress).link().deflate is expected
    path.write_text(BASE + '[[mcu]]\nname = "a"\nport = "p"\ncompress = "no"\n')
    with pytest.raises(UserError, match=r"key mcu\[0\]\.compress: must be a bool"):
        load(path)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ('[[mcu]]\nport = "/dev/ttyACM0"', "key mcu[0].name: is required"),
        ('[[mcu]]\nname = "sensor"', "key mcu[0].port: is required"),
        ('[[mcu]]\nname = "../x"\nport = "p"', "key mcu[0].name: must match"),
        (
            '[[mcu]]\nname = "a"\nport = "p"\n[[mcu]]\nname = "a"\nport = "q"',
            "key mcu[1].name: 'a' is the name of another [[mcu]]",
        ),
        ('[[mcu]]\nname = "a"\nport = ""', "key mcu[0].port: must not be empty"),
        ('[[mcu]]\nname = "a"\nport = "p"\nbaud = 0', "key mcu[0].baud: must be >= 50"),
        ('[[mcu]]\nname = "a"\nport = "p"\ntimeout_s = 0', "key mcu[0].timeout_s: must be >="),
        ('[[mcu]]\nname = "a"\nport = "p"\nspeed = 1', "key mcu[0].speed: unknown key"),
        ('[mcu]\nname = "a"\nport = "p"', "key mcu: must be an array of tables ([[mcu]])"),
    ],
)
def test_bad_mcu_config_names_the_table(tmp_path, tables, message):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + tables)
    with pytest.raises(UserError) as error:
        load(path)
    assert str(error.value).startswith(f"config {path}: key mcu")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_mcu_config_is_one_line_and_exit_code_2(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + '[[mcu]]\nname = "sensor"')
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"edgefleet: error: config {path}: key mcu[0].port: is required"
    ]


def test_status_carries_the_mcus_and_reads_payloads_without_them():
    mcus = (McuInfo("sensor", "2.0.0+0", "ok"), McuInfo("door", None, "unreachable"))
    status = Status("d1", "online", 5, mcus=mcus)
    assert Status.decode(status.encode()).mcus == mcus
    older = json.loads(status.encode())
    del older["mcus"]
    assert Status.decode(json.dumps(older).encode()).mcus == ()
    older["mcus"] = [{"name": "sensor", "version": "2.0", "state": "ok"}]
    with pytest.raises(ProtocolError, match="bad mcu version"):
        Status.decode(json.dumps(older).encode())


def test_the_agent_takes_one_update_per_mcu_and_no_rollback():
    update = Command("c1", "update", "sensor", 2, "r1", "http://gw:8080")
    assert decide(update, True, None) == ("act", "")
    assert decide(update, True, "r1")[0] == "ignore"  # MQTT delivered the offer twice
    assert decide(update, True, "r0") == ("reject", "busy with rollout 'r0'")
    assert "no [update] section" in decide(update, False, None)[1]
    assert decide(Command("c2", "rollback", "sensor"), True, None)[0] == "reject"


def test_the_gateway_offers_an_image_to_mcus_that_keep_an_older_one():
    def row(device: str, version: str | None, mcu: str = "ok", online: bool = True) -> Device:
        mcus = ({"name": "sensor", "version": version, "state": mcu},)
        return Device(device, 0.0, 0.0, state="online" if online else "offline", mcus=mcus)

    devices = [
        row("older", "1.0.0+0"),
        row("blank", None),
        row("same", "2.0.0+0"),
        row("newer", "2.1.0+0", mcu="failed"),
        row("gone", "1.0.0+0", online=False),
        Device("none", 0.0, 0.0, state="online"),
        row("lost", None, mcu="unreachable"),
    ]
    facts, skipped = mcu_candidates(devices, "sensor", "2.0.0+0")
    assert [f.device for f in facts] == ["older", "blank"]
    assert skipped == {
        "same": "MCU 'sensor' already keeps 2.0.0+0",
        "newer": "MCU 'sensor' already keeps 2.1.0+0",
        "gone": "device is offline",
        "none": "has no MCU 'sensor'",
        "lost": "MCU 'sensor' is unreachable",
    }


def slot(version, flags=0, image=b"") -> SlotInfo:
    sha = hashlib.sha256(image).digest()
    return SlotInfo(S.VALID, flags, version, len(image), sha)


def info(primary: SlotInfo, secondary: SlotInfo | None = None) -> InfoReply:
    return InfoReply(0, 0, 8, 4096, 0, ModelState.LOADED, primary, secondary or SlotInfo())


def test_worker_rules_kept_version_downgrade_and_what_is_retried():
    confirmed = SlotFlag.ACTIVE | SlotFlag.CONFIRMED
    assert kept_version(info(slot((2, 0, 0, 0), confirmed))) == "2.0.0+0"
    on_trial = info(slot((3, 0, 0, 0), SlotFlag.ACTIVE, b"v3"), slot((2, 0, 0, 0)))
    assert kept_version(on_trial) == "2.0.0+0"  # the next boot reverts an unconfirmed image
    assert kept_version(info(SlotInfo())) is None
    kept = info(slot((2, 0, 0, 0), confirmed, b"v2"))
    assert downgrade(kept, b"v1", "1.0.0+0").startswith("downgrade: image 1.0.0+0")
    assert downgrade(kept, b"v2", "2.0.0+0") is None  # already running: only confirm it
    assert downgrade(kept, b"v3", "2.0.1+0") is None
    assert transient(LinkLost("x")) and transient(NoAnswer("x"))
    assert transient(Refusal("DATA", ErrorCode.BAD_STATE, "HELLO first"))
    assert not transient(Refusal("FINISH", ErrorCode.SIGNATURE, "untrusted"))
    assert not transient(WrongProtocol("x"))


def test_fault_file_contents():
    assert parse("5\n", lambda: 99) == (5, False)
    assert parse("7 torn", lambda: 99) == (7, True)
    assert parse("random torn", lambda: 42) == (42, True)
    for text in ("", "0", "-3", "x", "5 twice", "5 torn now"):
        assert parse(text, lambda: 1) is None


def test_power_cut_from_a_fault_file_on_a_pty_is_survived_by_retries(tmp_path, images):
    flash = factory_flash(images.v1)
    fault = FaultFile(tmp_path / "cut", flash, LAYOUT)
    mcu = SimulatedMcu(flash, mcu_config(images))
    meta = McuImageMeta("sensor", 2, "2.0.0+0", len(images.v2))
    steps: list[dict] = []
    with UartServer(mcu, None, "pty", fault) as uart:
        port = McuPort(uart.port, 115200, timeout=0.3)
        fault.path.write_text("6")  # the first sector's write: cut mid-upload
        result = install_with_retries(port, images.v2, meta, "sensor/2.bin", steps.append)
        assert result["result"] == "committed", (result, steps)
        assert result["version"] == "2.0.0+0" and steps and steps[0]["step"] == "retry"
        assert not fault.path.exists()
        primary = query(port).primary
    assert primary.version_text == "2.0.0+0" and primary.flags & SlotFlag.CONFIRMED
