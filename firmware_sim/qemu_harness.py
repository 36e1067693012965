"""Build the Cortex-M firmware and run it in QEMU (mps2-an385) behind a TCP socket.

The build trusts the Ed25519 key(s) given to ``build_firmware``: only images they signed boot.

The firmware keeps its flash in ``mcu-flash.bin`` in the QEMU working directory through
semihosting, so ``power_cycle`` (kill QEMU, start it again) is a real power cut. The UART is a
socket chardev rather than a pty: QEMU drops pty output while no client is attached. QEMU
waits for that first client before it runs the guest, so no probe connection races the real one.

``arm_power_cut`` makes the firmware itself stop QEMU at its N-th flash operation (optionally
half done), counting across reboots; ``operations`` reads that count back.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent / "qemu"
QEMU = "qemu-system-arm"
CC = "arm-none-eabi-gcc"
FLASH_FILE = "mcu-flash.bin"
POWER_CUT_FILE = "power-cut"
POWER_CUT = struct.Struct("<III")
SECTOR_SIZE = 4096
SLOT_SECTORS = 16
FLASH_SIZE = SECTOR_SIZE * (2 * SLOT_SECTORS + 1)


class QemuError(Exception):
    """The firmware did not build."""


def missing_tools() -> str | None:
    """Why the QEMU target cannot run here, or None if it can."""
    for tool in (QEMU, CC, "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def build_firmware(trusted_key: Path | str = "", protocol: str = "edgefleet") -> Path:
    """``make`` the firmware into ``qemu/build/`` trusting ``trusted_key`` (a PEM file or 64
    hex digits; none: no image is trusted); returns the ELF path. ``protocol``: ``edgefleet``
    (``fw.elf``, protocol/serial) or ``smp`` (``fw-smp.elf``, an SMP server)."""
    build = FIRMWARE_DIR / "build"
    command = [
        "make",
        "-C",
        str(FIRMWARE_DIR),
        f"BUILD={build}",
        f"TRUSTED_KEY={trusted_key}",
        f"PYTHON={sys.executable}",
        f"PROTOCOL={protocol}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise QemuError(f"firmware build failed:\n{result.stdout}{result.stderr}")
    return build / ("fw-smp.elf" if protocol == "smp" else "fw.elf")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class QemuMcu:
    """One emulated MCU whose flash lives in ``state_dir``; a context manager that stops it."""

    def __init__(self, firmware: Path, state_dir: Path) -> None:
        self.firmware = firmware
        self.state_dir = state_dir
        self.port = ""
        self._proc: subprocess.Popen | None = None

    @property
    def flash_file(self) -> Path:
        return self.state_dir / FLASH_FILE

    def program(self, image: bytes) -> None:
        """Factory-program ``image`` into the primary slot of a fresh, erased flash."""
        flash = bytearray(b"\xff" * FLASH_SIZE)
        flash[: len(image)] = image
        self.flash_file.write_bytes(bytes(flash))

    def arm_power_cut(self, at: int = 0, torn: bool = False) -> None:
        """Count flash operations from now; at operation ``at`` (0: never) the power goes."""
        (self.state_dir / POWER_CUT_FILE).write_bytes(POWER_CUT.pack(at, int(torn), 0))

    def disarm_power_cut(self) -> None:
        (self.state_dir / POWER_CUT_FILE).unlink(missing_ok=True)

    def operations(self) -> int:
        """Flash operations counted since ``arm_power_cut``."""
        return POWER_CUT.unpack((self.state_dir / POWER_CUT_FILE).read_bytes())[2]

    def wait_for_power_loss(self, timeout: float) -> bool:
        """True if the firmware stopped QEMU (the armed power cut happened) within ``timeout``."""
        if self._proc is None:
            return False
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self.stop()
        return True

    def start(self) -> str:
        """Start QEMU; the guest runs once the first client connects to the returned port. A
        QEMU still there (or one that powered itself off and was never reaped) goes first."""
        self.stop()
        port = _free_port()
        self._proc = subprocess.Popen(
            [
                QEMU,
                "-M",
                "mps2-an385",
                "-display",
                "none",
                "-monitor",
                "none",
                "-semihosting-config",
                "enable=on,target=native",
                "-chardev",
                f"socket,id=uart0,host=127.0.0.1,port={port},server=on,wait=on,nodelay=on",
                "-serial",
                "chardev:uart0",
                "-kernel",
                str(self.firmware),
            ],
            cwd=self.state_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = f"socket://127.0.0.1:{port}"
        return self.port

    def stop(self) -> None:
        """Kill QEMU at once: to the firmware this is a power cut."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def power_cycle(self) -> str:
        self.stop()
        return self.start()

    def __enter__(self) -> QemuMcu:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
