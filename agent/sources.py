"""Sensor sources: async iterators of ``Chunk``s (float samples shaped like the model's input).

* ``SyntheticSource``: seeded Gaussian samples, paced; told to drift, it shifts their mean after
  a number of samples. With ``pattern = "bands"`` each sample is the banded input of a random
  class (``edgefleet.models.bands``), its bands dimmed or brightened by ``shift``, which a
  running source re-reads from ``shift_file`` when that file changes.
* ``ReplaySource``: samples from a file (NPY ``[N, ...]``, CSV or JSONL rows of numbers), paced,
  looping or not; at the end of a non-looping file it stops and the agent idles.
* ``SerialSource``: one sample per text line (numbers separated by commas or blanks) from a
  serial port or pyserial URL, read by a thread.

A row or line that does not parse is counted in ``BadInput`` (category ``bad_sensor``), logged once
per reason, and skipped. Samples come in chunks so the engine thread is handed work in bulk.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.bad_input import BadInput
from agent.config import SourceConfig
from edgefleet.models import bands

SERIAL_QUEUE = 4096
SERIAL_POLL_S = 1.0


class SourceError(Exception):
    """The source cannot start (file unreadable or of the wrong shape, port missing)."""


@dataclass(frozen=True)
class Chunk:
    samples: np.ndarray  # [n, *sample_shape] float32
    ts_ms: np.ndarray  # [n] int64, wall-clock milliseconds (UTC epoch)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_values(text: str, size: int) -> np.ndarray:
    """One sample from a text row of numbers; ``ValueError`` says why it is not one."""
    parts = text.replace(",", " ").split()
    if len(parts) != size:
        raise ValueError(f"expected {size} values, got {len(parts)}")
    values = np.array([float(p) for p in parts], dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("non-finite value")
    return values


def parse_json_row(text: str, size: int) -> np.ndarray:
    """A JSONL row: a (nested) list of numbers, or an object with such a list under "input"."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("input")
    values = np.asarray(data, dtype=np.float32).reshape(-1)
    if values.size != size:
        raise ValueError(f"expected {size} values, got {values.size}")
    if not np.isfinite(values).all():
        raise ValueError("non-finite value")
    return values


class Pacer:
    """How many samples are due at ``rate_hz`` (0: as many as asked, at once)."""

    def __init__(self, rate_hz: float, max_chunk: int):
        self.rate, self.max_chunk = rate_hz, max_chunk
        self._start = time.monotonic()
        self._done = 0

    async def next(self) -> int:
        if self.rate <= 0:
            await asyncio.sleep(0)
            return self.max_chunk
        while True:
            due = math.floor((time.monotonic() - self._start) * self.rate) - self._done
            if due > 0:
                take = min(due, self.max_chunk)
                self._done += take
                return take
            await asyncio.sleep((self._done + 1) / self.rate - (time.monotonic() - self._start))


class _Stateless:
    """Sources that hold nothing to release."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        return None


class ShiftFile:
    """A float in a file, re-read when its modification time changes; a file that does not
    parse is counted as bad input and the last good value stays."""

    def __init__(self, path: Path, value: float, bad_input: BadInput):
        self._path, self.value, self._bad_input = path, value, bad_input
        self._mtime: int | None = None

    def read(self) -> float:
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return self.value
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                value = float(self._path.read_text()[:64].strip())
                if not math.isfinite(value) or abs(value) > 1e6:
                    raise ValueError(f"{value} is out of range")
                self.value = value
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self._bad_input.record("bad_sensor", f"shift file {self._path}: {exc}")
        return self.value


class SyntheticSource(_Stateless):
    def __init__(
        self,
        config: SourceConfig,
        shape: tuple[int, ...],
        rate: float,
        chunk: int,
        bad_input: BadInput,
    ):
        self._rng = np.random.default_rng(config.seed)
        self._shape, self._config = shape, config
        self._pacer = Pacer(rate, chunk)
        self._made = 0
        if config.pattern == "bands" and tuple(shape) != bands.SHAPE:
            raise SourceError(
                f"pattern bands makes inputs of {bands.SHAPE}, the model takes {shape}"
            )
        self._shift = (
            ShiftFile(config.shift_file, config.shift, bad_input) if config.shift_file else None
        )

    def _make(self, n: int) -> np.ndarray:
        if self._config.pattern == "bands":
            shift = self._shift.read() if self._shift else self._config.shift
            return bands.make(self._rng, n, shift)[0]
        return self._rng.standard_normal((n, *self._shape), dtype=np.float32)

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        while True:
            n = await self._pacer.next()
            samples = self._make(n)
            drifted = np.arange(self._made, self._made + n) >= self._config.drift_after
            if self._config.drift and drifted.any():
                samples[drifted] += np.float32(self._config.drift)
            self._made += n
            yield Chunk(samples, np.full(n, now_ms(), dtype=np.int64))


class ReplaySource(_Stateless):
    def __init__(
        self,
        config: SourceConfig,
        shape: tuple[int, ...],
        rate: float,
        chunk: int,
        bad_input: BadInput,
    ):
        self._path, self._loop = config.path, config.loop
        self._shape, self._size = shape, math.prod(shape)
        self._pacer, self._bad_input = Pacer(rate, chunk), bad_input
        suffix = self._path.suffix.lower()
        if suffix not in (".npy", ".csv", ".jsonl"):
            raise SourceError(f"replay file {self._path} must be .npy, .csv or .jsonl")
        self._array = self._open_npy() if suffix == ".npy" else None
        self._parse = parse_json_row if suffix == ".jsonl" else parse_values

    def _open_npy(self) -> np.ndarray:
        try:
            array = np.load(self._path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read {self._path}: {exc}") from None
        if array.ndim < 1 or len(array) == 0 or math.prod(array.shape[1:]) != self._size:
            raise SourceError(
                f"{self._path} holds {array.shape}; needs [N, ...] with {self._size} values each"
            )
        return array.reshape(len(array), *self._shape)

    def _rows(self) -> Iterator[np.ndarray]:
        """Text rows that parse, in order, again and again when looping."""
        while True:
            with Path(self._path).open(encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        yield self._parse(line, self._size).reshape(self._shape)
                    except (ValueError, TypeError, RecursionError) as exc:
                        self._bad_input.record(
                            "bad_sensor", str(exc), file=str(self._path), line=number
                        )
            if not self._loop:
                return

    def _take(self, start: int, count: int) -> np.ndarray:
        """``count`` rows of the NPY file from ``start`` (wrapping around when looping)."""
        total = len(self._array)
        if not self._loop:
            count = max(0, min(count, total - start))
        if start + count <= total:  # a view of the mapped file: no copy
            return np.asarray(self._array[start : start + count], dtype=np.float32)
        index = np.arange(start, start + count) % total
        return np.asarray(self._array[index], dtype=np.float32)

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        rows = self._rows() if self._array is None else None
        position = 0
        while True:
            n = await self._pacer.next()
            if rows is None:
                batch = self._take(position, n)
                position += len(batch)
                if self._loop:
                    position %= len(self._array)
            else:
                taken = [row for _, row in zip(range(n), rows, strict=False)]
                batch = np.stack(taken) if taken else np.empty((0, *self._shape), np.float32)
            if len(batch):
                yield Chunk(batch, np.full(len(batch), now_ms(), dtype=np.int64))
            if len(batch) < n:
                return


class SerialSource:
    """Lines from a serial port; a reader thread parses them and hands samples to the loop
    through a bounded queue (a full queue counts the sample as an overrun)."""

    def __init__(
        self, config: SourceConfig, shape: tuple[int, ...], chunk: int, bad_input: BadInput
    ):
        self._config, self._shape, self._size = config, shape, math.prod(shape)
        self._chunk, self._bad_input = chunk, bad_input
        self._queue: asyncio.Queue[tuple[np.ndarray, int]] = asyncio.Queue(SERIAL_QUEUE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> SerialSource:
        import serial

        try:
            port = serial.serial_for_url(
                self._config.port, baudrate=self._config.baud, timeout=SERIAL_POLL_S
            )
        except (serial.SerialException, ValueError) as exc:
            raise SourceError(f"cannot open serial port {self._config.port}: {exc}") from None
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._read, args=(port, loop), name="serial", daemon=True
        )
        self._thread.start()
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _read(self, port, loop: asyncio.AbstractEventLoop) -> None:
        import serial

        limit, pending, skipping = self._config.max_line_bytes, b"", False
        try:
            while not self._stop.is_set():
                try:
                    data = port.read_until(b"\n", limit + 1 - len(pending))
                except serial.SerialException as exc:
                    loop.call_soon_threadsafe(self._bad_input.record, "bad_sensor", str(exc))
                    self._stop.wait(SERIAL_POLL_S)
                    continue
                pending += data
                if skipping:  # the rest of an overlong line
                    skipping, pending = not pending.endswith(b"\n"), b""
                elif pending.endswith(b"\n"):
                    loop.call_soon_threadsafe(self._line, pending, now_ms())
                    pending = b""
                elif len(pending) > limit:
                    loop.call_soon_threadsafe(
                        self._bad_input.record, "bad_sensor", f"line longer than {limit} bytes"
                    )
                    skipping, pending = True, b""
        finally:
            port.close()

    def _line(self, line: bytes, ts: int) -> None:
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            return
        try:
            values = parse_values(text, self._size).reshape(self._shape)
        except ValueError as exc:
            self._bad_input.record("bad_sensor", str(exc))
            return
        try:
            self._queue.put_nowait((values, ts))
        except asyncio.QueueFull:
            self._bad_input.record("sensor_overrun", "samples arrive faster than inference")

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        while True:
            items = [await self._queue.get()]
            while len(items) < self._chunk and not self._queue.empty():
                items.append(self._queue.get_nowait())
            yield Chunk(
                np.stack([v for v, _ in items]), np.array([t for _, t in items], dtype=np.int64)
            )
