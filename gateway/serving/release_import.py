"""Bringing what the operator signed offline onto the gateway that serves it.

The gateway holds only the online keys. The first import copies the operator's repository
(metadata and targets, never keys); later imports take in newer roots and targets metadata byte
for byte, verified as a device would, and re-publish snapshot and timestamp with the gateway's
keys, so the deltas the gateway signed stay listed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet.fsio import fsync_dir
from gateway.releases.errors import ReleaseError
from gateway.releases.keystore import KeyDirs
from gateway.releases.repository import Repository


@dataclass(frozen=True)
class ImportResult:
    created: bool
    new_targets: int
    targets_version: int


def gateway_keys(served_dir: Path, online_keys: Path) -> KeyDirs:
    """Key folders of a served repository: online keys only; the offline folder is absent."""
    return KeyDirs(offline=Path(served_dir) / "keys" / "offline-not-here", online=online_keys)


def import_release(source_dir: Path, served_dir: Path, online_keys: Path) -> ImportResult:
    source = Repository(source_dir)
    served_dir = Path(served_dir)
    if not (served_dir / "metadata").exists():
        Repository(source.dir, gateway_keys(source.dir, online_keys)).online_signers()
        _copy_repository(source, served_dir)
        repo = Repository(served_dir, gateway_keys(served_dir, online_keys))
        repo.refresh_timestamp()
        return ImportResult(True, len(repo.targets.signed.targets), repo.targets.signed.version)
    repo = Repository(served_dir, gateway_keys(served_dir, online_keys))
    added = repo.import_targets(source)
    return ImportResult(False, added, repo.targets.signed.version)


def _copy_repository(source: Repository, served_dir: Path) -> None:
    """Copy metadata/ and targets/ into a new folder, then rename it into place."""
    parent = served_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    if served_dir.exists() and any(served_dir.iterdir()):
        raise ReleaseError(f"{served_dir}: exists and is not an empty folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{served_dir.name}.", dir=parent))
    try:
        for part in ("metadata", "targets"):
            shutil.copytree(source.dir / part, staging / part, symlinks=False)
        for root, _dirs, files in os.walk(staging):
            for name in files:
                with open(Path(root) / name, "rb") as handle:
                    os.fsync(handle.fileno())
        if served_dir.exists():
            served_dir.rmdir()
        staging.rename(served_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(parent)
