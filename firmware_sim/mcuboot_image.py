"""MCUboot image format, verified exactly as ``imgtool sign`` writes it.

Layout: a 32-byte header (magic 0x96f3b83d) padded to ``hdr_size``, the payload, an optional
protected TLV area (magic 0x6908), then the TLV area (magic 0x6907). The SHA-256 TLV covers
everything before the unprotected TLV area; the Ed25519 TLV signs that digest (or, with the
SIG_PURE TLV, the covered bytes themselves). KEYHASH is SHA-256 of the key's DER
SubjectPublicKeyInfo. Pure functions: bytes in, ``VerifiedImage`` or an ``ImageError`` out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.mcu_image import TLV_SHA256, McuImageError, ParsedImage, parse_image

TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_ED25519 = 0x24
TLV_SIG_PURE = 0x25


class ImageError(Exception):
    """The bytes are not a well-formed image, or their hash does not match."""


class SignatureError(ImageError):
    """The image is well formed but no trusted key signed it."""


@dataclass(frozen=True)
class VerifiedImage:
    version: tuple[int, int, int, int]
    header_size: int
    image_size: int
    total_size: int
    sha256: bytes
    signed: bool

    @property
    def body_range(self) -> tuple[int, int]:
        return self.header_size, self.header_size + self.image_size


def key_id(key: Ed25519PublicKey) -> bytes:
    """KEYHASH as imgtool computes it: SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(_der(key)).digest()


def _der(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def image_extent(data: bytes) -> int:
    """Bytes the image occupies (header through TLVs); ImageError if it does not parse."""
    return _parse(data).total


def _parse(data: bytes) -> ParsedImage:
    try:
        return parse_image(data)
    except McuImageError as exc:
        raise ImageError(str(exc)) from None


def verify(
    data: bytes, trusted: list[Ed25519PublicKey], require_signature: bool = True
) -> VerifiedImage:
    """Check hash and (when ``require_signature``) an Ed25519 signature by a trusted key."""
    parsed = _parse(data)
    covered = bytes(data[: parsed.covered])
    digest = hashlib.sha256(covered).digest()
    values = dict(parsed.tlvs)
    pure = TLV_SIG_PURE in values
    if not pure:
        if values.get(TLV_SHA256) is None:
            raise ImageError("image has no SHA-256 TLV")
        if values[TLV_SHA256] != digest:
            raise ImageError("image hash does not match its SHA-256 TLV")
    signed = _signed_by(parsed.tlvs, trusted, covered if pure else digest)
    if require_signature and not signed:
        raise SignatureError("no trusted Ed25519 key signed this image")
    if pure and not signed:
        raise ImageError("pure-signature image cannot be checked without a key")
    return VerifiedImage(
        parsed.version, parsed.header_size, parsed.image_size, parsed.total, digest, signed
    )


def _signed_by(tlvs: list[tuple[int, bytes]], trusted: list[Ed25519PublicKey], message) -> bool:
    candidates = trusted
    for kind, value in tlvs:
        if kind == TLV_KEYHASH:
            candidates = [key for key in trusted if key_id(key) == value]
        elif kind == TLV_PUBKEY:
            candidates = [key for key in trusted if _der(key) == value]
        elif kind == TLV_ED25519:
            for key in candidates:
                try:
                    key.verify(value, message)
                except InvalidSignature:
                    continue
                return True
    return False


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """A trusted key from PEM: a public key, or the private key imgtool keygen writes."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        key = serialization.load_pem_private_key(pem, password=None).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key
