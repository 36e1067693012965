"""An MCU image from the gateway's repository, verified with TUF before it goes near the MCU.

Runs only in the MCU worker: it imports python-tuf. The bytes come the way a model's do
(``agent.updater.verified``: resumed, capped at the signed length, checked against the signed
hash) into this MCU's state folder. ``Refused``: the repository cannot prove the image is what
the targets key signed for an MCU; ``Transient``: the way there failed (the partial file stays,
to resume).
"""

from __future__ import annotations

from pathlib import Path

from agent.trust import TrustedRepository, TrustError
from agent.updater.download import DownloadLimits
from agent.updater.errors import Refused
from agent.updater.verified import fetch_verified, signed_target, trust_failure
from protocol.mcu_image import McuImageError, McuImageMeta, target_path


def fetch_image(
    state_dir: Path, trusted_root: Path, repository: str, target: str
) -> tuple[bytes, McuImageMeta]:
    """The target's bytes and what the targets key signed about them."""
    try:
        trust = TrustedRepository(state_dir / "tuf", repository, trusted_root)
    except TrustError as exc:
        raise trust_failure(exc) from None
    signed = signed_target(trust, target)
    try:
        meta = McuImageMeta.from_json(signed.custom)
    except McuImageError as exc:
        raise Refused(f"{target}: {exc}") from None
    if target_path(meta.name, meta.version) != target or meta.size != signed.length:
        raise Refused(f"{target}: the signed metadata describes {meta.name}/{meta.version}")
    return fetch_verified(trust, repository, signed, state_dir, DownloadLimits()), meta


def discard_downloads(state_dir: Path) -> None:
    """Drop downloaded images once an update has ended (the MCU holds what it needs)."""
    for partial in state_dir.glob("*.partial"):
        partial.unlink(missing_ok=True)
