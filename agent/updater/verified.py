"""A signed target's bytes, fetched the one way both updaters (models and MCU images) use.

Over HTTP the download resumes with Range into ``<sha256>.partial`` in the work folder, capped
at the signed length and checked against the signed hash; a resumed file that fails the check
is fetched once more from the start. A local repository (a USB stick, a copied folder) goes
through python-tuf's own download. Trust failures become the updater's errors here, in one
place: a transient one (the way there) or a refusal (a verdict about the target).
"""

from __future__ import annotations

from pathlib import Path

from agent.trust import TrustedRepository, TrustError, VerifiedTarget
from agent.updater.download import DownloadError, DownloadLimits, fetch, target_url
from agent.updater.errors import Refused, Transient, UpdateError


def trust_failure(exc: TrustError) -> UpdateError:
    kind = Transient if exc.transient else Refused
    return kind(f"{exc.reason}: {exc}", exc.reason)


def signed_target(trust: TrustedRepository, path: str) -> VerifiedTarget:
    """What the targets key signed about ``path``."""
    try:
        return trust.target(path)
    except TrustError as exc:
        raise trust_failure(exc) from None


def check(trust: TrustedRepository, path: str, data: bytes | bytearray) -> None:
    """``data`` is exactly the signed target ``path``."""
    try:
        trust.check(path, data)
    except TrustError as exc:
        raise trust_failure(exc) from None


def fetch_verified(
    trust: TrustedRepository,
    repository: str,
    signed: VerifiedTarget,
    work: Path,
    limits: DownloadLimits,
) -> bytes:
    """The bytes of ``signed``, checked against its signed length and hash."""
    if not repository.startswith(("http://", "https://")):
        local = work / "download"
        try:
            trust.download(signed.path, local)
        except TrustError as exc:
            raise trust_failure(exc) from None
        return local.read_bytes()
    partial = work / f"{signed.sha256}.partial"
    url = target_url(repository, signed.path, signed.sha256)
    resumed_at = _fetch_once(url, partial, signed.length, limits)
    try:
        check(trust, signed.path, partial.read_bytes())
    except UpdateError:
        partial.unlink()
        if resumed_at == 0:
            raise
        _fetch_once(url, partial, signed.length, limits)
        try:
            check(trust, signed.path, partial.read_bytes())
        except UpdateError:
            partial.unlink()
            raise
    return partial.read_bytes()


def _fetch_once(url: str, partial: Path, length: int, limits: DownloadLimits) -> int:
    """A download problem is never a verdict about the target: it is tried again later."""
    try:
        return fetch(url, partial, length, limits)
    except DownloadError as exc:
        raise Transient(f"{exc.reason}: {exc}", exc.reason) from None
