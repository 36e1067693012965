"""Simulated MCUs for a fleet: each an ``edgefleet mcu-sim`` process (MCUboot-style slots,
TFLite Micro) on a loopback socket, programmed at the factory with the fleet's first image and
attached to one agent through its ``[[mcu]]`` table. Images are bundled int8 models signed with
the real imgtool; MCU image version ``N`` is MCUboot version ``N.0.0``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgefleet.models import model_path
from edgefleet.processes import start_edgefleet
from firmware_sim import images
from firmware_sim.fleet.monitor import Monitor
from firmware_sim.layout import Layout

BAUD = 115200
# What the MCU runs, by image version: alternating fine-tunes of the int8 keyword model.
PAYLOADS = ("kws_int8_v1", "kws_int8_v2_head", "kws_int8_v2_full")


def image_version(reported: str | None) -> int | None:
    """The release version of an MCU's reported MCUboot version (``"2.0.0+0"`` -> 2)."""
    try:
        return int(reported.split(".", 1)[0]) if reported else None
    except ValueError:
        return None


class ImageSigner:
    """The operator's imgtool key; the MCUs trust its public half."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.key = images.keygen(workdir / "mcu-signing-key.pem")

    def image(self, version: int) -> Path:
        payload = model_path(PAYLOADS[(version - 1) % len(PAYLOADS)])
        out = self.workdir / f"image-{version}.bin"
        images.sign(self.key, payload, out, f"{version}.0.0", Layout().slot_size)
        return out


def protocol_of(index: int, fleet_protocol: str) -> str:
    """The protocol MCU ``index`` speaks: the fleet's, or alternating for ``mixed``."""
    if fleet_protocol == "mixed":
        return ("edgefleet", "smp")[index % 2]
    return fleet_protocol


class SimMcu:
    """One ``mcu-sim``: the edgefleet protocol on a loopback socket, or SMP on a pseudo-terminal
    (the SMP client opens serial devices only, as on a real board)."""

    def __init__(
        self, name: str, home: Path, signer: ImageSigner, factory: Path, protocol: str = "edgefleet"
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.name, self.home, self.protocol = name, home, protocol
        self.fault_file = home / "power-cut"
        self.attached_to = ""
        where = ["--protocol", "smp"] if protocol == "smp" else ["--socket"]
        self.proc = start_edgefleet(
            ["mcu-sim", *where, "--flash", str(home / "flash.bin"), "--key", str(signer.key),
             "--factory", str(factory), "--baud", str(BAUD), "--fault-file", str(self.fault_file)],
            home / "mcu-sim.log",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.port = self.proc.stdout.readline().decode().strip()
        if not self.port:
            raise RuntimeError(f"mcu-sim did not start; see {home / 'mcu-sim.log'}")

    def arm_power_cut(self, op: int | str) -> None:
        """Lose power at flash operation ``op`` of the next writes, or at one the MCU picks from
        its own seeded generator (``random``), so a run repeats."""
        self.fault_file.write_text(f"{op}\n")

    def reported_version(self, monitor: Monitor, image_name: str) -> int | None:
        status = monitor.status(self.attached_to)
        if status is None or status.state != "online":
            return None
        for mcu in status.mcus:
            if mcu.name == image_name:
                return image_version(mcu.version)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
