"""MCU images as releases: what the targets key signs about an MCUboot image, and the facts the
repository reads from the image's own header.

An MCU image release is the TUF target ``<name>/<version>.bin`` (the file exactly as ``imgtool
sign`` wrote it) whose ``custom`` field is ``McuImageMeta``: ``kind`` says it is for an MCU,
``image_version`` is the version in its MCUboot header, the one the MCU reports once it runs it.
A device parses the field through ``McuImageMeta.from_json`` before it sends anything to an MCU,
so a model target offered to an MCU is refused.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

KIND = "mcu-image"
VERSION_TEXT = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,5})\+([0-9]{1,10})")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
IMAGE_MAGIC = 0x96F3B83D
HEADER = struct.Struct("<IIHHIIBBHII")
TLV_INFO = struct.Struct("<HH")
TLV = struct.Struct("<BBH")
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
TLV_SHA256 = 0x10


class McuImageError(ValueError):
    """Bytes that are not a whole MCUboot image, or signed metadata that does not follow the
    schema."""


def target_path(name: str, version: int) -> str:
    return f"{name}/{version}.bin"


def parse_version(text: object) -> tuple[int, int, int, int]:
    """``"1.2.3+4"`` -> ``(1, 2, 3, 4)``, comparable as MCUboot compares versions."""
    major, minor, revision, build = (int(part) for part in _version_match(text).groups())
    return major, minor, revision, build


def _version_match(text: object) -> re.Match[str]:
    """``text`` as a version text; it comes from JSON, so it may be anything."""
    match = VERSION_TEXT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise McuImageError(f"bad image version {str(text)[:40]!r}: use MAJOR.MINOR.REVISION+BUILD")
    return match


@dataclass(frozen=True)
class McuImageMeta:
    name: str
    version: int  # the release version, as in the target path
    image_version: str  # from the MCUboot header: what the MCU reports when it runs the image
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "name": self.name,
            "version": self.version,
            "image_version": self.image_version,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: object) -> McuImageMeta:
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise McuImageError("the signed metadata does not describe an MCU image")
        name = data.get("name")
        if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
            raise McuImageError(f"bad MCU image name {str(name)[:80]!r}")
        version = _positive("version", data.get("version"))
        size = _positive("size", data.get("size"))
        image_version = _version_match(data.get("image_version")).string
        return cls(name, version, image_version, size)


def _positive(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise McuImageError(f"MCU image {key} must be a positive integer")
    return value


@dataclass(frozen=True)
class ParsedImage:
    """The layout of an MCUboot image: header, payload, TLV areas."""

    version: tuple[int, int, int, int]
    header_size: int
    image_size: int
    covered: int  # bytes the SHA-256 TLV and the signature cover
    total: int  # bytes the image occupies, TLV areas included
    tlvs: tuple[tuple[int, bytes], ...]  # in order, the protected area's first


def parse_image(data: bytes) -> ParsedImage:
    """The image at the start of ``data`` (a file, or a flash slot: what follows the TLV area is
    not read). Shared by the repository, which checks a file before signing it, and the
    simulated MCU's bootloader, which checks a slot before booting it."""
    if len(data) < HEADER.size:
        raise McuImageError("shorter than an MCUboot header")
    fields = HEADER.unpack_from(data)
    magic, _load, hdr_size, prot_size, img_size, _flags, major, minor, revision, build, _pad = (
        fields
    )
    if magic != IMAGE_MAGIC:
        raise McuImageError("no MCUboot image magic")
    if hdr_size < HEADER.size:
        raise McuImageError(f"header size {hdr_size} is smaller than the header")
    offset = hdr_size + img_size
    tlvs: list[tuple[int, bytes]] = []
    if prot_size:
        offset = _tlv_area(data, offset, TLV_PROT_INFO_MAGIC, tlvs, prot_size)
    covered = offset
    end = _tlv_area(data, offset, TLV_INFO_MAGIC, tlvs)
    return ParsedImage(
        (major, minor, revision, build), hdr_size, img_size, covered, end, tuple(tlvs)
    )


def inspect_image(data: bytes) -> str:
    """The header's version text of a whole MCUboot image, checked as far as the repository can
    without the MCU's keys: magic, header, TLV areas ending exactly at the end of the file, and
    the SHA-256 TLV when there is one. ``McuImageError`` says what is wrong."""
    parsed = parse_image(data)
    if parsed.total != len(data):
        raise McuImageError(f"{len(data) - parsed.total} bytes after the image's TLV area")
    digest = dict(reversed(parsed.tlvs)).get(TLV_SHA256)
    if digest is not None and digest != hashlib.sha256(data[: parsed.covered]).digest():
        raise McuImageError("the image does not match its SHA-256 TLV")
    return "{}.{}.{}+{}".format(*parsed.version)


def _tlv_area(
    data: bytes,
    offset: int,
    magic: int,
    out: list[tuple[int, bytes]],
    expected: int | None = None,
) -> int:
    if offset + TLV_INFO.size > len(data):
        raise McuImageError("the image ends before its TLV area")
    found, total = TLV_INFO.unpack_from(data, offset)
    if found != magic or total < TLV_INFO.size or expected not in (None, total):
        raise McuImageError(f"bad TLV area at {offset:#x}")
    end: int = offset + total
    if end > len(data):
        raise McuImageError("the TLV area runs past the end of the image")
    cursor = offset + TLV_INFO.size
    while cursor < end:
        if cursor + TLV.size > end:
            raise McuImageError("truncated TLV")
        kind, _, length = TLV.unpack_from(data, cursor)
        cursor += TLV.size
        if cursor + length > end:
            raise McuImageError("a TLV runs past its area")
        out.append((kind, bytes(data[cursor : cursor + length])))
        cursor += length
    return end
