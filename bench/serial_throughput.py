"""Serial upload throughput against the line rate, and the cost of resuming an upload.

The simulated MCU runs on a real pty paced to the baud rate (10 bits per byte); the host is the
same flasher ``edgefleet flash`` uses. Payload throughput counts image bytes over the DATA phase
only. Resume cost: the upload is cut at about half way and the MCU power cycled; the report
gives the extra bytes the host put on the wire and the extra seconds, both against an
uninterrupted run of the whole flash (upload, test swap, reboot, smoke test, confirm).

SMP rows (``--smp-baud``, default 115200): the same image uploaded to the simulator speaking SMP
(``mcu-sim --protocol smp``), by edgefleet's SMP host (smpclient, sized from the MCU's
MCUmgr parameters) with Zephyr's default 384-byte buffer and with a 2048-byte one, and by the
``smpmgr`` CLI (its upload time is its run minus the run of an ``os echo``: start-up and
connection). SMP's console framing is base64 in 128-byte lines, so no SMP client can carry
more than 3/4 x 124/128 = 72.7 % of the line rate as payload.

    python bench/serial_throughput.py [--bauds 115200 921600] [--smp-baud 115200] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.mcu.client import LinkConfig, McuClient
from agent.mcu.flasher import flash_image
from agent.mcu.transport import SerialTransport
from edgefleet import logs
from edgefleet.models import model_path
from firmware_sim.bootloader import Verifier
from firmware_sim.flash import Flash
from firmware_sim.layout import Layout, Slot
from firmware_sim.mcu import McuConfig, SimulatedMcu
from firmware_sim.mcuboot_image import load_public_key
from firmware_sim.smp_server import SmpConfig, SmpMcu
from firmware_sim.uart import UartServer
from tests.mcu.mcu_support import imgtool, sign

LAYOUT = Layout()


class Interrupted(Exception):
    pass


def make_images(work: Path) -> tuple[bytes, bytes, Verifier]:
    key = work / "key.pem"
    imgtool("keygen", "-k", str(key), "-t", "ed25519")
    signed = [
        sign(key, model_path(name), work / f"{name}.bin", version, LAYOUT.slot_size)
        for name, version in (("kws_int8_v1", "1.0.0"), ("kws_int8_v2_full", "2.0.0"))
    ]
    return signed[0], signed[1], Verifier((load_public_key(key.read_bytes()),))


def new_mcu(factory: bytes, verifier: Verifier) -> SimulatedMcu:
    flash = Flash(LAYOUT.geometry)
    flash.write(LAYOUT.base(Slot.PRIMARY), factory + b"\xff" * (-len(factory) % 8))
    return SimulatedMcu(flash, McuConfig(layout=LAYOUT, verifier=verifier))


class CountingTransport(SerialTransport):
    """Counts every byte the host puts on the wire."""

    written = 0

    def write(self, data: bytes) -> None:
        CountingTransport.written += len(data)
        super().write(data)


def connect(server: UartServer, baud: int) -> tuple[SerialTransport, McuClient]:
    transport = CountingTransport(server.port, baud)
    return transport, McuClient(transport, LinkConfig(line_rate=baud / 10))


def clean_run(baud: int, v1: bytes, v2: bytes, verifier: Verifier) -> dict:
    with UartServer(new_mcu(v1, verifier), baud, "pty") as server:
        CountingTransport.written = 0
        transport, client = connect(server, baud)
        began = time.monotonic()
        result = flash_image(client, v2, confirm=True)
        total = time.monotonic() - began
        transport.close()
        wire_bytes = CountingTransport.written
    payload_rate = result.bytes_sent / result.upload_seconds
    line_rate = baud / 10
    return {
        "baud": baud,
        "image_bytes": len(v2),
        "upload_seconds": round(result.upload_seconds, 3),
        "total_seconds": round(total, 3),
        "payload_bytes_per_second": round(payload_rate),
        "line_bytes_per_second": line_rate,
        "efficiency": round(payload_rate / line_rate, 4),
        "host_wire_bytes": wire_bytes,
    }


def resume_run(baud: int, v1: bytes, v2: bytes, verifier: Verifier, clean: dict) -> dict:
    cut_at = len(v2) // 2
    with UartServer(new_mcu(v1, verifier), baud, "pty") as server:
        CountingTransport.written = 0
        transport, client = connect(server, baud)
        client.hello()
        acked = 0

        def cut(done: int) -> None:
            nonlocal acked
            acked = done
            if done >= cut_at:
                raise Interrupted

        began = time.monotonic()
        with contextlib.suppress(Interrupted):
            client.send_data(v2, client.resume_point(v2), cut)
        first = time.monotonic() - began
        transport.close()
        server.power_cycle()
        transport, client = connect(server, baud)
        began = time.monotonic()
        result = flash_image(client, v2, confirm=True)
        second = time.monotonic() - began
        transport.close()
    return {
        "baud": baud,
        "interrupted_at": acked,
        "resumed_from": result.resumed_from,
        "extra_wire_bytes": CountingTransport.written - clean["host_wire_bytes"],
        "extra_seconds": round(first + second - clean["total_seconds"], 3),
    }


def new_smp_mcu(factory: bytes, verifier: Verifier, buf_size: int) -> SmpMcu:
    flash = Flash(LAYOUT.geometry)
    flash.write(LAYOUT.base(Slot.PRIMARY), factory + b"\xff" * (-len(factory) % 8))
    return SmpMcu(flash, SmpConfig(layout=LAYOUT, verifier=verifier, buf_size=buf_size))


def smp_ours(baud: int, v1: bytes, v2: bytes, verifier: Verifier, buf_size: int) -> float:
    """Seconds edgefleet's SMP host takes to upload ``v2``."""
    from agent.mcu.smp_host import SmpSession

    async def upload(port: str) -> float:
        session = SmpSession(port, baud, 2.0)
        await session.connect(5.0)
        began = time.monotonic()
        await session.upload(v2, None)
        seconds = time.monotonic() - began
        await session.close()
        return seconds

    with UartServer(new_smp_mcu(v1, verifier, buf_size), baud, "pty") as server:
        return asyncio.run(upload(server.port))


def smp_smpmgr(baud: int, v1: bytes, image: Path, verifier: Verifier) -> float:
    """Seconds ``smpmgr image upload`` takes, less an ``smpmgr os echo`` (start-up, connect)."""
    smpmgr = str(Path(sys.executable).with_name("smpmgr"))

    def timed(port: str, *args: str) -> float:
        began = time.monotonic()
        subprocess.run([smpmgr, "--port", port, *args], check=True, capture_output=True)
        return time.monotonic() - began

    with UartServer(new_smp_mcu(v1, verifier, 384), baud, "pty") as server:
        baseline = timed(server.port, "os", "echo", "x")
        return timed(server.port, "image", "upload", str(image)) - baseline


def smp_rows(baud: int, v1: bytes, v2: bytes, v2_path: Path, verifier: Verifier) -> list[dict]:
    line_rate = baud / 10
    runs = [
        ("edgefleet (smpclient), 384-byte buffer", smp_ours(baud, v1, v2, verifier, 384)),
        ("edgefleet (smpclient), 2048-byte buffer", smp_ours(baud, v1, v2, verifier, 2048)),
        ("smpmgr 0.19, 384-byte buffer", smp_smpmgr(baud, v1, v2_path, verifier)),
    ]
    return [
        {
            "client": client,
            "baud": baud,
            "upload_seconds": round(seconds, 3),
            "payload_bytes_per_second": round(len(v2) / seconds),
            "efficiency": round(len(v2) / seconds / line_rate, 4),
        }
        for client, seconds in runs
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bauds", type=int, nargs="+", default=[115200, 921600])
    parser.add_argument("--smp-baud", type=int, default=115200, help="line rate of the SMP rows")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logs.configure("warning")
    with tempfile.TemporaryDirectory() as tmp:
        v1, v2, verifier = make_images(Path(tmp))
        rows = []
        for baud in args.bauds:
            clean = clean_run(baud, v1, v2, verifier)
            clean["resume"] = resume_run(baud, v1, v2, verifier, clean)
            rows.append(clean)
        smp = smp_rows(args.smp_baud, v1, v2, Path(tmp) / "kws_int8_v2_full.bin", verifier)
    print(
        f"{'baud':>8} {'payload B/s':>12} {'line B/s':>9} {'of line':>8} {'upload s':>9} "
        f"{'resume +B':>10} {'resume +s':>10}"
    )
    for row in rows:
        resume = row["resume"]
        print(
            f"{row['baud']:>8} {row['payload_bytes_per_second']:>12} "
            f"{row['line_bytes_per_second']:>9.0f} {row['efficiency']:>8.1%} "
            f"{row['upload_seconds']:>9.2f} {resume['extra_wire_bytes']:>10} "
            f"{resume['extra_seconds']:>10.2f}"
        )
    print(f"\nSMP at {args.smp_baud} baud:")
    for row in smp:
        print(
            f"{row['client']:>42} {row['payload_bytes_per_second']:>7} B/s "
            f"{row['efficiency']:>6.1%} {row['upload_seconds']:>6.2f} s"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"serial_throughput": rows, "smp_throughput": smp}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
