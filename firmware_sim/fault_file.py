"""Power cuts asked for while ``edgefleet mcu-sim`` serves: a file naming the flash operation.

The file holds ``N`` (cut at the N-th flash operation counted from when the simulator sees the
file) or ``random`` (a choice among the operations of a full-slot upload, from a generator
seeded with 0, so a run repeats), optionally followed by ``torn`` (the cut operation is left
half done). The cut goes through the flash model's one choke point (``PowerCut``); the simulator
deletes the file once the power went, so whoever wrote it can wait for it to vanish.
"""

from __future__ import annotations

import random
from pathlib import Path

import structlog

from firmware_sim.flash import Flash, PowerCut
from firmware_sim.layout import Layout

log = structlog.get_logger()


def parse(text: str, choose) -> tuple[int, bool] | None:
    """``(operations from now, torn)``, or None for text that asks for nothing known."""
    words = text.split()
    if not words or len(words) > 2 or words[1:] not in ([], ["torn"]):
        return None
    if words[0] == "random":
        return choose(), len(words) == 2
    if not words[0].isdigit() or int(words[0]) < 1:
        return None
    return int(words[0]), len(words) == 2


class FaultFile:
    def __init__(self, path: Path, flash: Flash, layout: Layout, seed: int = 0) -> None:
        self.path = path
        self._flash = flash
        self._random = random.Random(seed)
        self._upload_operations = 2 + 3 * layout.image_sectors  # trailer, record, 3 per sector
        self._armed = False
        self._ignored: str | None = None

    def poll(self) -> None:
        """Arm the cut the file asks for, once per file."""
        if self._armed:
            return
        try:
            text = self.path.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return
        asked = parse(text, lambda: self._random.randint(1, self._upload_operations))
        if asked is None:
            if text.strip() and text != self._ignored:  # an empty file is still being written
                log.warning("mcu.fault_file_ignored", path=str(self.path), text=text[:40])
                self._ignored = text
            return
        at, torn = asked
        done = self._flash.power.count
        self._flash.power = PowerCut(at=done + at, torn=torn, count=done)
        self._armed = True
        log.info("mcu.power_cut_armed", operations=at, torn=torn)

    def cut(self) -> None:
        """The power went: the file has been served."""
        self._armed = False
        self.path.unlink(missing_ok=True)
