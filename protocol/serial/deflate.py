"""Compressed uploads: an image as independent raw-deflate blocks, one per flash sector.

Block ``i`` inflates to exactly the image bytes of sector ``i`` (the last block to what is
left). Blocks share no history, so an MCU that lost power and holds sectors ``0..i-1`` resumes
with a fresh inflater at block ``i``, and the host starts sending there: the resume offset of a
compressed upload is a sector boundary of the *image*, never a point inside a deflate stream.

``BlockInflater`` is the MCU's side and trusts nothing it is fed: it never produces more than a
block's bytes (one byte over and the block is refused as a bomb), never more blocks than the
image has, and refuses a block that takes more compressed bytes than deflate ever needs for
it (endless empty blocks).
"""

from __future__ import annotations

import zlib

from protocol.serial.errors import CodecError

WBITS = -15  # raw deflate: no zlib header or Adler-32, the frame CRC and image hash cover it
LEVEL = 9


class InflateError(CodecError):
    """Compressed upload bytes that do not inflate to the announced image, block by block."""


def deflate_blocks(image: bytes, block_size: int) -> list[bytes]:
    """The image as raw-deflate blocks of ``block_size`` image bytes each (the last shorter)."""
    if block_size <= 0:
        raise ValueError("block size must be positive")
    blocks = []
    for start in range(0, len(image), block_size):
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS)
        blocks.append(compressor.compress(image[start : start + block_size]) + compressor.flush())
    return blocks


def max_block_input(block_len: int) -> int:
    """The most compressed bytes a block of ``block_len`` bytes may take.

    Deflate's worst case is stored blocks: 5 bytes per 64 KiB stored block on top of the data;
    a fixed margin covers that and a header with room to spare.
    """
    return block_len + block_len // 1024 + 64


def first_block(start: int, block_size: int) -> int:
    """The block a resumed upload starts at: ``start`` is a block boundary or the image's end."""
    return -(-start // block_size)


class BlockInflater:
    """Inflates the blocks of an image of ``size`` bytes, from image offset ``start`` on."""

    def __init__(self, size: int, block_size: int, start: int = 0) -> None:
        if size <= 0 or block_size <= 0:
            raise ValueError("size and block size must be positive")
        if not 0 <= start <= size or (start % block_size and start != size):
            raise ValueError(f"{start} is not a block boundary of a {size}-byte image")
        self._size = size
        self._block_size = block_size
        self.index = first_block(start, block_size)
        self._start_block()

    @property
    def done(self) -> bool:
        """Every block of the image has been inflated."""
        return self.index * self._block_size >= self._size

    def _start_block(self) -> None:
        self._inflater = zlib.decompressobj(WBITS)
        self._out = bytearray()
        self._taken = 0

    def _block_len(self) -> int:
        return min(self._block_size, self._size - self.index * self._block_size)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Inflate ``data``; the blocks it completed as ``(index, bytes)``, in order.

        Raises InflateError for bytes that are not deflate, a block that inflates to more or
        fewer bytes than its share of the image, or data after the last block.
        """
        completed = []
        while data:
            if self.done:
                raise InflateError("compressed data past the end of the image")
            want = self._block_len()
            room = want - len(self._out)
            try:
                out = self._inflater.decompress(data, room + 1)
            except zlib.error as exc:
                raise InflateError(f"block {self.index} is not raw deflate ({exc})") from exc
            ended = self._inflater.eof
            rest = self._inflater.unused_data if ended else self._inflater.unconsumed_tail
            self._taken += len(data) - len(rest)
            if len(out) > room:
                raise InflateError(f"block {self.index} inflates past its {want} bytes")
            if self._taken > max_block_input(want):
                raise InflateError(
                    f"block {self.index} takes more than {max_block_input(want)} compressed bytes"
                )
            self._out += out
            if ended:
                if len(self._out) != want:
                    raise InflateError(
                        f"block {self.index} inflates to {len(self._out)} bytes, not {want}"
                    )
                completed.append((self.index, bytes(self._out)))
                self.index += 1
                self._start_block()
            data = rest
        return completed
