"""Labels from applications on the device: a unix socket (``[labels] socket``) where an app
that learns the truth (a user's correction, a later sensor reading) says which class an earlier
record or sample really was. Each label becomes a telemetry record, in order with the
inferences, and reaches the cloud's dataset like any record.

One JSON object per line, answered with one line:

    {"id": "<dev:boot:seq>", "label": 2, "labeller": "user"}   ->   {"record": "<dev:boot:seq>"}
                                                                  or {"error": "..."}

``id`` is a record or sample id of this device (``labeller`` is optional, default ``device``).
Lines are bounded, connections are few, and a bad line is answered and counted; nothing a
client sends stops the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from agent.bad_input import BadInput
from protocol.telemetry import MAX_CLASSES, TARGET_PATTERN
from protocol.topics import NAME_PATTERN

MAX_LINE = 4096
MAX_CLIENTS = 8
ANSWER_TIMEOUT_S = 10.0

log = structlog.get_logger()

Record = Callable[[str, int, str], Awaitable[str]]  # (target, label, labeller) -> record id


class LabelError(ValueError):
    """A line that is not a label this device can take."""


def parse_line(line: bytes, device: str) -> tuple[str, int, str]:
    """One request line -> ``(target, label, labeller)``, or ``LabelError`` saying why not."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise LabelError("not a JSON object") from None
    if not isinstance(data, dict):
        raise LabelError("not a JSON object")
    target, label = data.get("id"), data.get("label")
    labeller = data.get("labeller", "device")
    match = TARGET_PATTERN.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise LabelError("'id' must be a record id: <device>:<boot>:<seq>")
    if match.group(1) != device:
        raise LabelError(f"'id' names device {match.group(1)!r}, not this one ({device!r})")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < MAX_CLASSES:
        raise LabelError(f"'label' must be a class index from 0 to {MAX_CLASSES - 1}")
    if not isinstance(labeller, str) or NAME_PATTERN.fullmatch(labeller) is None:
        raise LabelError("'labeller' must be a short name")
    return target, label, labeller


class LabelServer:
    """``async with LabelServer(path, device, record, bad_input)``: serves until the block ends."""

    def __init__(self, path: Path, device: str, record: Record, bad_input: BadInput):
        self.path, self.device, self.record, self.bad_input = path, device, record, bad_input
        self._server: asyncio.Server | None = None
        self._clients = asyncio.Semaphore(MAX_CLIENTS)

    async def __aenter__(self) -> LabelServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o660)
        log.info("labels_listening", socket=str(self.path))
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients.locked():
            writer.write(b'{"error": "too many clients"}\n')
            writer.close()
            return
        async with self._clients:
            try:
                while line := await reader.readline():
                    writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                    await writer.drain()
            except (ValueError, asyncio.LimitOverrunError):  # a line past MAX_LINE
                self.bad_input.record("bad_label", f"line longer than {MAX_LINE} bytes")
                with contextlib.suppress(ConnectionError):
                    writer.write(b'{"error": "line too long"}\n')
            except ConnectionError:
                pass
            finally:
                writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            target, label, labeller = parse_line(line, self.device)
        except LabelError as exc:
            self.bad_input.record("bad_label", str(exc))
            return {"error": str(exc)}
        try:
            record_id = await asyncio.wait_for(
                self.record(target, label, labeller), ANSWER_TIMEOUT_S
            )
        except (RuntimeError, TimeoutError) as exc:
            return {"error": f"not recorded: {exc or 'timed out'}"}
        log.info("label_recorded", target=target, label=label, record=record_id)
        return {"record": record_id}
