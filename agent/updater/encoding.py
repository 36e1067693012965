"""Content encoding of what the repository may send compressed: TUF metadata and gate vectors
(JSON) arrive gzip-compressed when the server offers it, at a sixth of their size.

Whatever a server sends is inflated in steps of at most one chunk, and never past a cap, so a
small answer that inflates to gigabytes (a gzip bomb) costs one chunk of memory before it is
refused. Models and deltas are never asked for compressed: they are fetched with Range, whose
offsets are those of the file, and are compressed already.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any

ACCEPT_GZIP = {"Accept-Encoding": "gzip"}
COMPRESSIBLE_SUFFIXES = (".json",)


class EncodingError(Exception):
    """The body cannot be decoded: an unknown encoding, a corrupt or truncated gzip stream."""


class TooLong(EncodingError):
    """More than the cap came out (decoded, or as it was)."""


def compressible(url: str) -> bool:
    return url.endswith(COMPRESSIBLE_SUFFIXES)


def decoded_chunks(
    read: Callable[[int], bytes], headers: Message, chunk_bytes: int, max_bytes: int
) -> Iterator[bytes]:
    """The body ``read`` returns, decoded as ``headers`` say, in chunks of at most
    ``chunk_bytes``; ``TooLong`` once more than ``max_bytes`` would come out."""
    encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "identity":
        inflate = None
    elif encoding in ("gzip", "x-gzip"):
        inflate = zlib.decompressobj(wbits=31)
    else:
        raise EncodingError(f"unsupported Content-Encoding {encoding!r}")
    total = 0
    while raw := read(chunk_bytes):
        pieces = [raw] if inflate is None else _inflated(inflate, raw, chunk_bytes)
        for piece in pieces:
            total += len(piece)
            if total > max_bytes:
                raise TooLong(f"longer than {max_bytes} bytes once decoded")
            yield piece
    if inflate is not None and not inflate.eof:
        raise EncodingError("gzip body ends before its stream does")


def _inflated(inflate: Any, raw: bytes, chunk_bytes: int) -> Iterator[bytes]:
    # ``inflate``: a ``zlib.decompressobj`` (its type is private to the zlib module)
    try:
        if inflate.eof:
            raise EncodingError("bytes after the end of the gzip stream")
        piece = inflate.decompress(raw, chunk_bytes)
        while piece:
            yield piece
            piece = inflate.decompress(inflate.unconsumed_tail, chunk_bytes)
    except zlib.error as exc:
        raise EncodingError(f"corrupt gzip body: {exc}") from None
