"""Signing keys on disk: one PEM file per role, private to the operator.

The offline keys (root, targets) decide what a device may run; the online keys (snapshot,
timestamp, deltas) only vouch for freshness and for transport deltas, and are what a gateway
holds. They live in separate folders so the offline ones can be moved to offline storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner

from edgefleet.fsio import atomic_write_bytes
from gateway.releases.errors import ReleaseError

OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp", "deltas")


@dataclass(frozen=True)
class KeyDirs:
    offline: Path
    online: Path

    def path(self, role: str) -> Path:
        return (self.offline if role in OFFLINE_ROLES else self.online) / f"{role}.key"


def generate() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def save(signer: CryptoSigner, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, signer.private_bytes, mode=0o600)


def load(path: Path) -> CryptoSigner:
    """A signer from a PEM key file, or a one-line refusal naming the file."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"{path}: key file not found") from None
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read key file: {exc.strerror}") from None
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
        return CryptoSigner(private_key)
    except (ValueError, TypeError) as exc:
        raise ReleaseError(f"{path}: not a usable private key: {exc}") from None
