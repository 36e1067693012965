"""An MCU image from the gateway's repository, verified with TUF before it goes near the MCU.

Runs only in the MCU worker: it imports python-tuf. The download resumes with HTTP Range into
``<sha256>.partial`` beside this MCU's TUF metadata, is capped at the signed length and checked
against the signed hash; a resumed file that fails the check is fetched once more from the
start. ``Refused``: the repository cannot prove the image is what the targets key signed for
an MCU; ``Transient``: the repository could not be reached (the partial file stays, to resume).
"""

from __future__ import annotations

from pathlib import Path

from agent.trust import TrustedRepository, TrustError
from agent.updater.download import DownloadError, DownloadLimits, fetch, target_url
from agent.updater.errors import Refused, Transient
from protocol.mcu_image import McuImageError, McuImageMeta, target_path


def fetch_image(
    state_dir: Path, trusted_root: Path, repository: str, target: str
) -> tuple[bytes, McuImageMeta]:
    """The target's bytes and what the targets key signed about them."""
    try:
        trust = TrustedRepository(state_dir / "tuf", repository, trusted_root)
        signed = trust.target(target)
    except TrustError as exc:
        raise _failure(exc) from None
    try:
        meta = McuImageMeta.from_json(signed.custom)
    except McuImageError as exc:
        raise Refused(f"{target}: {exc}") from None
    if target_path(meta.name, meta.version) != target or meta.size != signed.length:
        raise Refused(f"{target}: the signed metadata describes {meta.name}/{meta.version}")
    partial = state_dir / f"{signed.sha256}.partial"
    url = target_url(repository, target, signed.sha256)
    resumed_at = _download(url, partial, signed.length)
    try:
        trust.check(target, partial.read_bytes())
    except TrustError as exc:
        partial.unlink()
        if resumed_at == 0:
            raise _failure(exc) from None
        _download(url, partial, signed.length)
        try:
            trust.check(target, partial.read_bytes())
        except TrustError as again:
            partial.unlink()
            raise _failure(again) from None
    return partial.read_bytes(), meta


def discard_downloads(state_dir: Path) -> None:
    """Drop downloaded images once an update has ended (the MCU holds what it needs)."""
    for partial in state_dir.glob("*.partial"):
        partial.unlink(missing_ok=True)


def _download(url: str, partial: Path, length: int) -> int:
    try:
        return fetch(url, partial, length, DownloadLimits())
    except DownloadError as exc:
        if exc.transient:
            raise Transient(str(exc)) from None
        raise Refused(f"{exc.reason}: {exc}") from None


def _failure(exc: TrustError) -> Exception:
    if exc.reason == "unreachable":
        return Transient(str(exc))
    return Refused(f"{exc.reason}: {exc}")
