"""Helpers for the MCU tests: real imgtool keys and signed images, an in-process MCU link."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from agent.mcu.client import LinkConfig, McuClient
from edgefleet.models import model_path
from firmware_sim.bootloader import Verifier
from firmware_sim.flash import Flash
from firmware_sim.images import imgtool, sign
from firmware_sim.layout import Layout, Slot
from firmware_sim.mcu import McuConfig, SimulatedMcu
from firmware_sim.mcuboot_image import load_public_key

LAYOUT = Layout(sector_size=4096, slot_sectors=10, write_align=8)


class Images:
    """Keys and images made once per session with the real imgtool."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = root / "key.pem"
        self.other_key = root / "other.pem"
        imgtool("keygen", "-k", str(self.key), "-t", "ed25519")
        imgtool("keygen", "-k", str(self.other_key), "-t", "ed25519")
        slot = LAYOUT.slot_size
        self.v1 = sign(self.key, model_path("kws_int8_v1"), root / "v1.bin", "1.0.0", slot)
        self.v2 = sign(self.key, model_path("kws_int8_v2_full"), root / "v2.bin", "2.0.0", slot)
        self.v3 = sign(self.key, model_path("kws_int8_v2_head"), root / "v3.bin", "3.0.0", slot)
        self.foreign = sign(
            self.other_key, model_path("kws_int8_v2_full"), root / "foreign.bin", "2.0.0", slot
        )
        for version in (1, 2):
            raw = root / f"small{version}.raw"
            raw.write_bytes(hashlib.sha256(bytes([version])).digest() * 160)
            signed = sign(self.key, raw, root / f"small{version}.bin", f"0.{version}.0", slot)
            setattr(self, f"small{version}", signed)
        junk = root / "junk.raw"
        junk.write_bytes(bytes(range(256)) * 40)
        self.junk = sign(self.key, junk, root / "junk.bin", "4.0.0", slot)
        noise = root / "noise.raw"
        noise.write_bytes(random.Random(0).randbytes(30_000))
        self.noise = sign(self.key, noise, root / "noise.bin", "5.0.0", slot)
        self.big = sign(self.key, model_path("kws_f32_v1"), root / "big.bin", "9.0.0", 4 * slot)

    def verifier(self) -> Verifier:
        return Verifier((load_public_key(self.key.read_bytes()),))

    def path(self, name: str) -> Path:
        return self.root / f"{name}.bin"


def factory_flash(image: bytes, layout: Layout = LAYOUT) -> Flash:
    """A device fresh from the factory: ``image`` programmed in the primary slot, confirmed."""
    flash = Flash(layout.geometry)
    padded = image + b"\xff" * (-len(image) % layout.write_align)
    flash.write(layout.base(Slot.PRIMARY), padded)
    flash.power.count = 0
    return flash


def mcu_config(images: Images, **overrides) -> McuConfig:
    values = {"layout": LAYOUT, "verifier": images.verifier(), "arena_size": 16 * 1024}
    values.update(overrides)
    return McuConfig(**values)


class DirectLink:
    """The client's transport wired straight into an in-process MCU (no pty, no pacing).

    ``tamper`` may rewrite or drop each outgoing frame, to play a noisy line.
    """

    def __init__(self, mcu: SimulatedMcu, tamper=None) -> None:
        self.mcu = mcu
        self.tamper = tamper
        self._inbox = bytearray()
        self.sent_frames = 0

    def write(self, data: bytes) -> None:
        self.sent_frames += 1
        if self.tamper is not None:
            data = self.tamper(self.sent_frames, data)
        self._inbox += self.mcu.receive(data)
        if self.mcu.reboot_pending:
            self.mcu.power_on()

    def read(self, timeout: float) -> bytes:
        data = bytes(self._inbox)
        self._inbox.clear()
        return data

    def close(self) -> None:
        pass


def direct_client(mcu: SimulatedMcu, tamper=None, **link) -> McuClient:
    config = {"timeout": 0.05, "max_chunk": 1024, "window": 4}
    config.update(link)
    return McuClient(DirectLink(mcu, tamper), LinkConfig(**config))


class Unplugged(Exception):
    """The cable pulled in the middle of an upload."""


def interrupt_upload(client: McuClient, image: bytes, after: int) -> None:
    """Start uploading ``image`` and pull the cable once ``after`` bytes were acknowledged."""

    def unplug(done: int) -> None:
        if done > after:
            raise Unplugged

    try:
        client.send_data(image, client.resume_point(image), unplug)
    except Unplugged:
        return
    raise AssertionError("the upload finished before the cable was pulled")
