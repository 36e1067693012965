"""Deltas between the model a device runs and the one it is offered, built once and cached as
targets of the gateway's delegated ``deltas`` role.

Where a delta would not be smaller than the compressed model, the offer is the full model. A
delta cached in another container format than devices accept now is made again.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.releases.errors import ReleaseError
from gateway.releases.repository import Release, Repository
from protocol.delta import (
    FORMAT_VERSION,
    Algorithm,
    delta_target_path,
    make_delta,
    read_header,
)


@dataclass(frozen=True)
class Offer:
    """What a device should fetch: a delta target, or the full model target."""

    target: str  # the model it ends up with, e.g. kws/3.tflite
    fetch: str  # the target to download: a delta path or the model path itself
    kind: str  # "delta" or "full"
    length: int


class DeltaService:
    def __init__(self, repo: Repository):
        self.repo = repo
        self._full_only: set[tuple[str, int, int]] = set()

    def _release(self, name: str, version: int) -> Release | None:
        return next(
            (r for r in self.repo.releases() if r.name == name and r.version == version), None
        )

    def _model_bytes(self, release: Release) -> bytes:
        return (
            self.repo.targets_dir / release.name / f"{release.sha256}.{release.version}.tflite"
        ).read_bytes()

    def offer(self, name: str, to_version: int, from_version: int | None) -> Offer:
        target = self._release(name, to_version)
        if target is None:
            raise ReleaseError(f"{name}/{to_version}.tflite is not a signed release")
        full = Offer(target.path, target.path, "full", target.length)
        source = self._release(name, from_version) if from_version else None
        key = (name, from_version or 0, to_version)
        if source is None or key in self._full_only:
            return full
        path = delta_target_path(name, source.version, to_version)
        cached = self.repo.deltas.signed.targets.get(path)
        custom = cached.unrecognized_fields.get("custom", {}) if cached is not None else {}
        if cached is not None and custom.get("format") == FORMAT_VERSION:
            return Offer(target.path, path, "delta", cached.length)
        delta = make_delta(self._model_bytes(source), self._model_bytes(target))
        header = read_header(delta)
        if header.algorithm == Algorithm.FULL_ZLIB:
            self._full_only.add(key)
            return full
        signed = self.repo.add_delta(
            path,
            delta,
            {
                "from": source.path,
                "from_sha256": source.sha256,
                "to": target.path,
                "to_sha256": target.sha256,
                "algorithm": header.algorithm.name.lower(),
                "format": FORMAT_VERSION,
            },
        )
        return Offer(target.path, path, "delta", signed.length)
