"""The simulated MCU on a real pty (and a loopback socket), paced, driven by ``edgefleet flash``."""

from __future__ import annotations

import json

import pytest

from agent.mcu.client import LinkConfig, McuClient
from agent.mcu.host import McuPort, query
from agent.mcu.transport import open_transport
from edgefleet import cli
from firmware_sim.mcu import SimulatedMcu
from firmware_sim.uart import UartServer
from protocol.serial.messages import SlotFlag
from tests.mcu.mcu_support import factory_flash, interrupt_upload, mcu_config

BAUD = 921600


@pytest.fixture
def run_cli(monkeypatch):
    """``edgefleet`` with only the MCU commands."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("agent.mcu.commands", "firmware_sim.commands"))

    def run(*argv: str) -> int:
        return cli.main(list(argv))

    return run


@pytest.fixture
def server(images):
    mcu = SimulatedMcu(factory_flash(images.v1), mcu_config(images))
    with UartServer(mcu, BAUD, "pty") as uart:
        yield uart


def test_flash_over_a_paced_pty(server, images, run_cli, capsys):
    code = run_cli(
        "flash",
        "--port",
        server.port,
        "--baud",
        str(BAUD),
        "--confirm",
        "--json",
        str(images.path("v2")),
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == "2.0.0+0"
    assert result["confirmed"] is True
    assert result["model_state"] == "LOADED"
    assert result["compressed"] is True
    assert result["bytes_sent"] < len(images.v2)
    line_seconds = result["bytes_sent"] * 10 / BAUD  # the pacing holds for what crossed the wire
    assert result["upload_seconds"] >= 0.95 * line_seconds
    assert server.mcu.boot.image.version == (2, 0, 0, 0)


def test_no_compress_flag_sends_the_image_as_it_is(server, images, run_cli, capsys):
    argv = ["flash", "--port", server.port, "--baud", str(BAUD), "--json", "--no-compress"]
    assert run_cli(*argv, str(images.path("v2"))) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compressed"] is False
    assert result["bytes_sent"] == len(images.v2)


def test_raw_upload_keeps_the_line_busy(images):
    """Uncompressed at 115200: at least 98 % of the line rate carries image bytes (4 KiB
    chunks, and ACKs that travel on the other wire without holding up the incoming bytes)."""
    from agent.mcu.flasher import flash_image

    baud = 115200
    mcu = SimulatedMcu(factory_flash(images.v1), mcu_config(images, model_runtime=False))
    with UartServer(mcu, baud, "pty") as uart:
        transport = open_transport(uart.port, baud)
        try:
            client = McuClient(transport, LinkConfig(line_rate=baud / 10, deflate=False))
            result = flash_image(client, images.v2, confirm=True)
        finally:
            transport.close()
    assert not result.compressed
    assert result.bytes_sent / result.upload_seconds / (baud / 10) >= 0.98


def test_flash_over_a_socket_and_query(images, run_cli, capsys):
    mcu = SimulatedMcu(factory_flash(images.v1), mcu_config(images))
    with UartServer(mcu, None, "socket") as uart:
        assert run_cli("flash", "--port", uart.port, str(images.path("v2"))) == 0
        info = query(McuPort(uart.port))
    assert "running 2.0.0+0, on trial" in capsys.readouterr().out
    assert info.primary.version == (2, 0, 0, 0)
    assert not info.primary.flags & SlotFlag.CONFIRMED
    assert info.secondary.version == (1, 0, 0, 0)


def test_interrupted_upload_resumes_after_power_cycle(server, images):
    transport = open_transport(server.port, BAUD)
    client = McuClient(transport, LinkConfig(line_rate=BAUD / 10))
    client.hello()
    interrupt_upload(client, images.v2, after=18000)
    transport.close()
    server.power_cycle()
    from agent.mcu.flasher import flash_image

    transport = open_transport(server.port, BAUD)
    try:
        result = flash_image(
            McuClient(transport, LinkConfig(line_rate=BAUD / 10)), images.v2, confirm=True
        )
    finally:
        transport.close()
    assert result.resumed_from >= 16384
    assert result.compressed  # what went raw resumes compressed: the flags are the image's
    assert 0 < result.bytes_sent < len(images.v2) - result.resumed_from


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("foreign", "signature refused"),
        ("big", "too large for the slot"),
    ],
)
def test_refusals_are_one_clear_line(server, images, run_cli, capsys, image, expected):
    code = run_cli("flash", "--port", server.port, "--baud", str(BAUD), str(images.path(image)))
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("edgefleet: error:")]
    assert len(errors) == 1 and expected in errors[0], lines


def test_no_device_is_one_clear_line(tmp_path, images, run_cli, capsys):
    code = run_cli("flash", "--port", str(tmp_path / "ttyNONE"), str(images.path("v2")))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgefleet: error: no device at")


def test_wrong_protocol_is_one_clear_line(tmp_path, images, run_cli, capsys):
    import os
    import threading
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def console():
        while not stop.is_set():
            os.write(master, b"U-Boot> ")
            stop.wait(0.05)

    thread = threading.Thread(target=console, daemon=True)
    thread.start()
    try:
        code = run_cli(
            "flash", "--port", os.ttyname(slave), "--timeout", "0.2", str(images.path("v2"))
        )
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)
    assert code == 2
    assert "does not speak the edgefleet serial protocol" in capsys.readouterr().err


def test_mcu_sim_command_serves_a_persistent_mcu(tmp_path, images, run_cli, capsys):
    """``edgefleet mcu-sim`` in its own process: flash it, stop it, start it, it kept the image."""
    import signal
    import subprocess
    import sys

    launcher = (
        "import sys; from edgefleet import cli; "
        "cli.COMMAND_MODULES = ('firmware_sim.commands',); sys.exit(cli.main(sys.argv[1:]))"
    )
    command = [
        sys.executable,
        "-c",
        launcher,
        "mcu-sim",
        "--flash",
        str(tmp_path / "flash.bin"),
        "--key",
        str(images.key),
        "--factory",
        str(images.path("v1")),
        "--socket",
        "--slot-sectors",
        "10",
    ]

    def serve_and(action):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            port = proc.stdout.readline().decode().strip()
            assert port.startswith("socket://127.0.0.1:")
            return action(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0

    assert (
        serve_and(
            lambda port: run_cli("flash", "--port", port, "--confirm", str(images.path("v2")))
        )
        == 0
    )
    capsys.readouterr()

    def version(port):
        run_cli("flash", "--port", port, "--json", str(images.path("v2")))
        return json.loads(capsys.readouterr().out)

    result = serve_and(version)
    assert result["version"] == "2.0.0+0"
    assert result["bytes_sent"] == 0


class Echo:
    """An MCU that answers every byte with one byte: both wires equally busy."""

    reboot_pending = False

    def receive(self, data: bytes) -> bytes:
        return data

    def power_on(self) -> None:
        pass


def test_the_simulated_line_is_full_duplex():
    """Bytes in and replies out share no time: an echo of 0.5 s of line takes about 0.5 s,
    not 1 s (a UART that waited for each reply before reading on would take both)."""
    import os
    import time
    import tty

    baud, size = 19200, 960
    with UartServer(Echo(), baud, "pty") as uart:
        fd = os.open(uart.port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            began = time.monotonic()
            os.write(fd, bytes(range(1, 241)) * (size // 240))
            echoed = b""
            while len(echoed) < size and time.monotonic() - began < 5:
                echoed += os.read(fd, size)
            seconds = time.monotonic() - began
        finally:
            os.close(fd)
    assert echoed == bytes(range(1, 241)) * (size // 240)
    line_seconds = size * 10 / baud
    assert line_seconds <= seconds < 1.4 * line_seconds
