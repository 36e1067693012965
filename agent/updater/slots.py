"""The A/B model slots and the active pointer.

``slots/a.tflite`` and ``slots/b.tflite`` hold models; ``slots/active.json`` says which one runs
and, only while a new model is on trial, which one to fall back to. The pointer is one small file
replaced atomically, so switching models is a single rename.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.updater.files import sha256_file, write_atomic

POINTER_FORMAT = 1
SLOT_NAMES = ("a", "b")


class SlotError(Exception):
    """The slot folder holds something this agent did not write."""


@dataclass(frozen=True)
class SlotRecord:
    """A model in a slot, as the offline-signed target describes it."""

    slot: str
    target: str
    name: str
    version: int
    sha256: str
    length: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlotRecord:
        try:
            record = cls(
                slot=str(data["slot"]),
                target=str(data["target"]),
                name=str(data["name"]),
                version=int(data["version"]),
                sha256=str(data["sha256"]),
                length=int(data["length"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SlotError(f"bad slot record: {exc!r}") from None
        if record.slot not in SLOT_NAMES:
            raise SlotError(f"bad slot name {record.slot!r}")
        return record


@dataclass(frozen=True)
class Pointer:
    active: SlotRecord
    previous: SlotRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": POINTER_FORMAT,
            "active": self.active.to_json(),
            "previous": self.previous.to_json() if self.previous else None,
        }


def other(slot: str) -> str:
    return SLOT_NAMES[1 - SLOT_NAMES.index(slot)]


class Slots:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pointer_path = self.dir / "active.json"

    def path(self, slot: str) -> Path:
        return self.dir / f"{slot}.tflite"

    def pointer(self) -> Pointer | None:
        """The active pointer, or None on a device that never had a model."""
        try:
            data = json.loads(self.pointer_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise SlotError(f"{self.pointer_path}: not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != POINTER_FORMAT:
            raise SlotError(f"{self.pointer_path}: unknown pointer format")
        previous = data.get("previous")
        return Pointer(
            SlotRecord.from_json(data.get("active") or {}),
            SlotRecord.from_json(previous) if previous else None,
        )

    def inactive(self) -> str:
        """The slot a new model goes into: never the active one."""
        pointer = self.pointer()
        return other(pointer.active.slot) if pointer else SLOT_NAMES[0]

    def holds(self, record: SlotRecord) -> bool:
        """Whether the slot's bytes are exactly the signed model the record names."""
        return sha256_file(self.path(record.slot)) == record.sha256

    def meta_path(self, slot: str) -> Path:
        return self.dir / f"{slot}.meta.json"

    def install(self, slot: str, data: bytes, custom: dict[str, Any] | None = None) -> None:
        """Write ``data`` into ``slot``; with ``custom`` (the verified ML metadata of the
        target) beside it, named by the model's hash, so the daemon still has it once newer
        releases have pruned the target from the repository's metadata."""
        if custom is not None:
            record = {"sha256": hashlib.sha256(data).hexdigest(), "custom": custom}
            write_atomic(self.meta_path(slot), json.dumps(record).encode(), "install.meta")
        write_atomic(self.path(slot), data, "install")

    def installed_meta(self, sha256: str) -> dict[str, Any] | None:
        """The metadata kept beside whichever slot was installed with the model ``sha256``."""
        for slot in SLOT_NAMES:
            try:
                record = json.loads(self.meta_path(slot).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("sha256") == sha256:
                custom = record.get("custom")
                return custom if isinstance(custom, dict) else None
        return None

    def point(self, pointer: Pointer, why: str) -> None:
        """Switch the active pointer (``why``: switch, commit or rollback, for the fault hooks)."""
        data = json.dumps(pointer.to_json(), indent=1, sort_keys=True).encode()
        write_atomic(self.pointer_path, data, f"pointer.{why}")
