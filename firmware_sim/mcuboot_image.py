"""MCUboot image format, verified exactly as ``imgtool sign`` writes it.

Layout: a 32-byte header (magic 0x96f3b83d) padded to ``hdr_size``, the payload, an optional
protected TLV area (magic 0x6908), then the TLV area (magic 0x6907). The SHA-256 TLV covers
everything before the unprotected TLV area; the Ed25519 TLV signs that digest (or, with the
SIG_PURE TLV, the covered bytes themselves). KEYHASH is SHA-256 of the key's DER
SubjectPublicKeyInfo. Pure functions: bytes in, ``VerifiedImage`` or an ``ImageError`` out.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

IMAGE_MAGIC = 0x96F3B83D
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
HEADER = struct.Struct("<IIHHIIBBHII")
TLV_INFO = struct.Struct("<HH")
TLV = struct.Struct("<BBH")
TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_SHA256 = 0x10
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


@dataclass(frozen=True)
class _Parsed:
    version: tuple[int, int, int, int]
    header_size: int
    image_size: int
    covered: int
    total: int
    tlvs: list[tuple[int, bytes]]


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


def _parse(data: bytes) -> _Parsed:
    if len(data) < HEADER.size:
        raise ImageError("shorter than an image header")
    magic, _load, hdr_size, prot_size, img_size, _flags, *version, _pad = HEADER.unpack_from(data)
    if magic != IMAGE_MAGIC:
        raise ImageError("no MCUboot image magic")
    if hdr_size < HEADER.size:
        raise ImageError(f"header size {hdr_size} is smaller than the header")
    offset = hdr_size + img_size
    tlvs: list[tuple[int, bytes]] = []
    if prot_size:
        _read_area(data, offset, TLV_PROT_INFO_MAGIC, prot_size, tlvs)
        offset += prot_size
    covered = offset
    if offset + TLV_INFO.size > len(data):
        raise ImageError("image runs past the end of the slot")
    _, total = TLV_INFO.unpack_from(data, offset)
    end = _read_area(data, offset, TLV_INFO_MAGIC, total, tlvs)
    return _Parsed(tuple(version), hdr_size, img_size, covered, end, tlvs)


def _read_area(data: bytes, offset: int, magic: int, expected: int, out: list) -> int:
    if offset + TLV_INFO.size > len(data):
        raise ImageError("image runs past the end of the slot")
    found, total = TLV_INFO.unpack_from(data, offset)
    if found != magic or total != expected or total < TLV_INFO.size:
        raise ImageError(f"bad TLV area at {offset:#x}")
    end = offset + total
    if end > len(data):
        raise ImageError("TLV area runs past the end of the slot")
    cursor = offset + TLV_INFO.size
    while cursor < end:
        if cursor + TLV.size > end:
            raise ImageError("truncated TLV")
        kind, _, length = TLV.unpack_from(data, cursor)
        cursor += TLV.size
        if cursor + length > end:
            raise ImageError("TLV runs past its area")
        out.append((kind, bytes(data[cursor : cursor + length])))
        cursor += length
    return end


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
