"""The QEMU firmware's SMP build (``fw-smp.elf``) against the hosts that speak SMP to it.

One QEMU for the module, behind a pty relayed to its UART socket that outlives power cycles;
each test starts from a freshly programmed flash. The real ``smpmgr`` CLI (one interactive
process for all its commands) uploads, reads states, marks for test, resets, confirms, and is
refused an image no trusted key signed; edgefleet's own SMP host (``edgefleet flash --protocol
smp``, the agent's MCU worker with ``[[mcu]] protocol = "smp"``) flashes it, and resumes an
upload a power cut interrupted. Small images keep smpmgr's uploads short (it sends 256-byte
frames); edgefleet's host sends the full-size model image.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest

from agent.mcu.errors import McuError
from agent.mcu.host import McuPort, open_device
from agent.mcu.smp_host import SmpSession
from agent.mcu.worker import install_with_retries
from firmware_sim import qemu_harness
from firmware_sim.images import sign
from protocol.mcu_image import McuImageMeta
from protocol.serial.messages import SlotFlag
from protocol.serial.smp_image import image_hash
from tests.mcu.mcu_support import LAYOUT
from tests.mcu.smp_support import EDGEFLEET, PtyRelay, SmpmgrShell, assert_trial_then_confirm

pytestmark = pytest.mark.qemu

UPLOAD_CUT = 12  # a flash operation a few sectors into an upload of the model image


@pytest.fixture(scope="module")
def smp_firmware(images):
    reason = qemu_harness.missing_tools()
    if reason:
        pytest.skip(f"QEMU target unavailable: {reason}")
    return qemu_harness.build_firmware(images.key, protocol="smp")


@pytest.fixture(scope="module")
def foreign_small(images) -> bytes:
    """A small image signed by a key the firmware does not trust."""
    raw = images.root / "small1.raw"
    return sign(images.other_key, raw, images.root / "foreign_small.bin", "0.3.0", LAYOUT.slot_size)


class Board:
    """The module's QEMU and the pty in front of it."""

    def __init__(self, firmware, state_dir) -> None:
        self.qemu = qemu_harness.QemuMcu(firmware, state_dir)
        self.qemu.program(b"")
        self.qemu.start()
        self.relay = PtyRelay(lambda: self.qemu.port)
        self.port = self.relay.port

    def fresh(self, image: bytes, cut_at: int | None = None, torn: bool = False) -> None:
        """Power off, factory-program ``image``, power on; with ``cut_at``, count the flash
        operations from here and cut the power at that one (0: count only)."""
        self.qemu.stop()
        self.qemu.program(image)
        if cut_at is None:
            self.qemu.disarm_power_cut()
        else:
            self.qemu.arm_power_cut(cut_at, torn)
        self.qemu.start()
        wait_for_boot(self.port)

    def close(self) -> None:
        self.relay.close()
        self.qemu.stop()


@pytest.fixture(scope="module")
def board(smp_firmware, tmp_path_factory):
    started = Board(smp_firmware, tmp_path_factory.mktemp("qemu-smp"))
    yield started
    started.close()


@pytest.fixture(scope="module")
def shell(board):
    started = SmpmgrShell(board.port)
    yield started
    started.close()


def wait_for_boot(port: str):
    """The states, once the board answers again after a reset or a power-on."""

    async def wait():
        session = SmpSession(port, 115200, 0.5)
        try:
            return await session.wait_for_boot(20)
        finally:
            await session.close()

    return asyncio.run(wait())


@contextmanager
def power_back_after_a_cut(qemu):
    """Power the board on again (disarmed) as soon as the armed cut stops it."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if qemu.wait_for_power_loss(0.1):
                qemu.disarm_power_cut()
                qemu.start()
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def ok(out: str) -> str:
    assert "Error" not in out, out
    return out


def test_smpmgr_uploads_tests_resets_and_confirms_on_qemu(board, shell, images):
    board.fresh(images.v1)
    new = image_hash(images.small2)
    assert "100.0%" in ok(shell.run("image", "upload", str(images.path("small2"))))
    states = shell.states()
    assert states[0]["version"] == "1.0.0" and states[0]["active"] and states[0]["confirmed"]
    assert states[1]["version"] == "0.2.0" and states[1]["hash"] == new
    assert not states[1]["pending"]
    ok(shell.run("image", "state-write", new.hex()))
    assert shell.states()[1]["pending"]
    ok(shell.run("os", "reset"))
    wait_for_boot(board.port)
    states = shell.states()
    assert states[0]["version"] == "0.2.0" and states[0]["active"]
    assert not states[0]["confirmed"] and states[1]["confirmed"]  # on trial
    ok(shell.run("image", "state-write", "--confirm"))
    ok(shell.run("os", "reset"))
    wait_for_boot(board.port)
    states = shell.states()
    assert states[0]["version"] == "0.2.0" and states[0]["confirmed"]
    assert "r='hello'" in ok(shell.run("os", "echo", "hello"))


def test_smpmgr_is_refused_an_untrusted_image_and_an_unconfirmed_test_reverts_on_qemu(
    board, shell, images, foreign_small
):
    board.fresh(images.v1)
    ok(shell.run("image", "upload", str(images.path("foreign_small"))))
    refused = shell.run("image", "state-write", image_hash(foreign_small).hex())
    assert "INVALID_TLV" in refused, refused
    assert not shell.states()[1]["pending"]
    ok(shell.run("image", "upload", str(images.path("small2"))))
    ok(shell.run("image", "state-write", image_hash(images.small2).hex()))
    ok(shell.run("os", "reset"))
    wait_for_boot(board.port)
    assert shell.states()[0]["version"] == "0.2.0"  # on trial, nobody confirms it
    ok(shell.run("os", "reset"))
    wait_for_boot(board.port)
    states = shell.states()
    assert states[0]["version"] == "1.0.0" and states[0]["confirmed"]


def edgefleet_flash(port: str, *args: str) -> subprocess.CompletedProcess:
    command = [str(EDGEFLEET), "flash", "--protocol", "smp", "--port", port, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_edgefleet_flash_over_smp_on_qemu(board, images):
    board.fresh(images.v1)
    done = edgefleet_flash(board.port, "--json", str(images.path("v2")))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == "2.0.0+0" and not result["confirmed"]  # on trial
    assert result["bytes_sent"] == len(images.v2)
    assert_trial_then_confirm(board.port, images)
    refused = edgefleet_flash(board.port, "--confirm", str(images.path("foreign_small")))
    assert refused.returncode != 0
    assert (
        "signature refused: the MCU does not trust the key that signed foreign_small.bin"
        in refused.stderr
    ), refused.stderr
    assert open_device(McuPort(board.port, protocol="smp")).query().primary.version == (2, 0, 0, 0)


def test_agent_worker_installs_through_a_power_cut_mid_upload_on_qemu(board, images):
    """``[[mcu]] protocol = "smp"``: the worker the agent starts answers a query; its install
    loses power a few sectors into the upload, and the next attempt resumes from the offset
    the board reports."""
    board.fresh(images.v1, cut_at=UPLOAD_CUT, torn=True)
    query = [sys.executable, "-m", "agent.mcu.worker", "--port", board.port, "--protocol", "smp"]
    done = subprocess.run([*query, "query"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"version": "1.0.0+0", "state": "ok"}
    port = McuPort(board.port, 115200, timeout=0.5, protocol="smp")
    steps: list[dict] = []
    with power_back_after_a_cut(board.qemu):
        result = install_with_retries(
            port, images.v2, McuImageMeta("door", 2, "2.0.0+0", len(images.v2)), "", steps.append
        )
    assert result["result"] == "committed", (result, steps)
    assert steps and steps[0]["step"] == "retry", steps
    resumed = result["resumed_from"]
    assert 0 < resumed < len(images.v2) and resumed % qemu_harness.SECTOR_SIZE == 0
    info = open_device(port).query()
    assert info.primary.version == (2, 0, 0, 0) and info.primary.flags & SlotFlag.CONFIRMED


def test_power_cut_before_the_swap_keeps_the_old_image_then_the_upload_resumes_on_qemu(
    board, images
):
    """Count the flash operations of an upload, then cut the power at the next one: marking
    the image for test. The old image still boots; the next install finds the whole image
    in flash, sends nothing, and the new image boots."""
    board.fresh(images.v1, cut_at=0)
    device = open_device(McuPort(board.port, 115200, timeout=0.5, protocol="smp"))

    async def upload(session):
        await session.connect(5)
        try:
            return await session.upload(images.small2, None)
        finally:
            await session.close()

    assert asyncio.run(upload(SmpSession(board.port, 115200, 0.5))) == 0
    upload_ops = board.qemu.operations()
    assert upload_ops > 2

    board.fresh(images.v1, cut_at=upload_ops + 1)
    with pytest.raises(McuError):
        device.install(images.small2, confirm=True)
    assert board.qemu.wait_for_power_loss(5)
    board.qemu.disarm_power_cut()
    board.qemu.start()
    info = wait_for_boot(board.port)
    assert device.runs(info.primary, images.v1) and info.primary.flags & SlotFlag.CONFIRMED
    result = device.install(images.small2, confirm=True)
    assert result.resumed_from == len(images.small2) and result.bytes_sent == 0
    assert result.version == "0.2.0+0" and result.confirmed
