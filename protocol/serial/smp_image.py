"""An MCUboot image as an SMP server names it: its SHA-256 TLV and its version text.

Zephyr's image group reports, per slot, the value of the image's SHA-256 TLV (not a hash of the
file) and the header version as ``MAJOR.MINOR.REVISION``, with ``.BUILD`` appended only when
the build number is not 0. A host finds, tests and recognises its image by that hash.
"""

from __future__ import annotations

from protocol.mcu_image import TLV_SHA256, McuImageError, parse_image

HASH_SIZE = 32


def image_hash(data: bytes) -> bytes:
    """The image's SHA-256 TLV; ``McuImageError`` if it does not parse or has none."""
    for kind, value in parse_image(data).tlvs:
        if kind == TLV_SHA256 and len(value) == HASH_SIZE:
            return value
    raise McuImageError("the image has no SHA-256 TLV")


def version_text(version: tuple[int, int, int, int]) -> str:
    """``(1, 2, 3, 0)`` -> ``"1.2.3"``, ``(1, 2, 3, 4)`` -> ``"1.2.3.4"``, as Zephyr writes it."""
    major, minor, revision, build = version
    text = f"{major}.{minor}.{revision}"
    return f"{text}.{build}" if build else text
