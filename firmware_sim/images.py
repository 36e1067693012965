"""Signed MCUboot images for demos and tests, made with the real ``imgtool`` (the ``mcu`` extra).

The options are the ones the MCU side expects (docs/serial-protocol.md): an Ed25519 key, a
0x200-byte header padded in, 8-byte alignment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

IMGTOOL = str(Path(sys.executable).with_name("imgtool"))


def imgtool(*args: str) -> None:
    subprocess.run([IMGTOOL, *args], check=True, capture_output=True)


def keygen(path: Path) -> Path:
    """A new Ed25519 signing key (PEM); the MCU trusts its public half (``mcu-sim --key``)."""
    imgtool("keygen", "-k", str(path), "-t", "ed25519")
    return path


def sign(key: Path, payload: Path, out: Path, version: str, slot_size: int) -> bytes:
    """Sign ``payload`` (a .tflite model, say) as image ``version`` (``"1.2.3"``) into ``out``."""
    imgtool(
        "sign",
        "--key",
        str(key),
        "--header-size",
        "0x200",
        "--align",
        "8",
        "--version",
        version,
        "--slot-size",
        str(slot_size),
        "--pad-header",
        str(payload),
        str(out),
    )
    return out.read_bytes()
