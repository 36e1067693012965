"""Atomic, durable file replacement with a fault hook after each step.

Same recipe as ``edgefleet.fsio.atomic_write_bytes`` (temp file, fsync, rename, fsync of the
directory), spelled out here so that a crash test can cut the process between any two steps.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent.updater.faults import hook
from edgefleet.fsio import fsync_dir


def write_atomic(path: Path, data: bytes | bytearray, hook_prefix: str) -> None:
    """Replace ``path`` with ``data``; a reader sees the old bytes or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        hook(f"{hook_prefix}.tmp_written")
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    hook(f"{hook_prefix}.renamed")
    fsync_dir(path.parent)
    hook(f"{hook_prefix}.dir_synced")


def sha256_file(path: Path) -> str | None:
    """The file's SHA-256, or None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
