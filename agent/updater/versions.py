"""The highest version this device ever committed, per model name: rollback protection that
holds across names.

TUF refuses older metadata, and the running model's version refuses an older model of the same
name; neither remembers a name the device left. Without this file ``kws/5 -> other/1 ->
kws/1`` would be three acceptable steps. The file only grows (a version is recorded when a
commit settles, and never lowered, not even by an operator's signed rollback), and is replaced
atomically, so a crash leaves the old or the new record.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.updater.files import write_atomic
from protocol.topics import NAME_PATTERN

VERSIONS_FORMAT = 1


class VersionsError(Exception):
    """The record is not one this agent wrote; no downgrade can be judged against it."""


class CommittedVersions:
    """``STATE_DIR/versions.json``: ``{"format": 1, "highest": {name: version}}``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise VersionsError(f"{self.path}: unreadable: {exc}") from None
        highest = data.get("highest") if isinstance(data, dict) else None
        if not isinstance(highest, dict) or data.get("format") != VERSIONS_FORMAT:
            raise VersionsError(f"{self.path}: not a format {VERSIONS_FORMAT} version record")
        if not all(
            isinstance(name, str) and NAME_PATTERN.fullmatch(name) and type(v) is int and v >= 0
            for name, v in highest.items()
        ):
            raise VersionsError(f"{self.path}: a name or version is malformed")
        return highest

    def record(self, name: str, version: int) -> None:
        """Remember that ``name`` ``version`` was committed (a no-op when a higher one was)."""
        highest = self.load()
        if highest.get(name, -1) >= version:
            return
        highest[name] = version
        data = {"format": VERSIONS_FORMAT, "highest": dict(sorted(highest.items()))}
        write_atomic(self.path, json.dumps(data, indent=1).encode(), "versions")
