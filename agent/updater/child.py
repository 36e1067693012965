"""The one way the agent runs update work in a child process (a model update, an MCU image, a
query of an MCU): every JSON object the child prints on stdout is handed over as it comes, and
a child past its time or whose caller is cancelled is killed, which each worker is built to
survive (it persists before it acts)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any


async def run_child(
    command: Sequence[str], on_line: Callable[[dict[str, Any]], None], limit_s: float
) -> tuple[int | None, str]:
    """Run ``command``; returns its exit code (None: it was killed) and its stderr."""
    child = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )

    async def relay(stdout: asyncio.StreamReader) -> None:
        async for raw in stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # not a line of the worker's contract
            if isinstance(line, dict):
                on_line(line)

    try:
        async with asyncio.timeout(limit_s):
            stdout, errors = _pipes(child)
            _, stderr = await asyncio.gather(relay(stdout), errors.read())
            await child.wait()
    except TimeoutError:
        stderr = b"worker timed out"
    finally:
        if child.returncode is None:  # timed out or cancelled
            child.kill()
            await child.wait()
    return child.returncode, stderr.decode(errors="replace")


def _pipes(child: asyncio.subprocess.Process) -> tuple[asyncio.StreamReader, asyncio.StreamReader]:
    """The child's stdout and stderr, which ``run_child`` always opens as pipes."""
    if child.stdout is None or child.stderr is None:
        raise RuntimeError("child process started without stdout and stderr pipes")
    return child.stdout, child.stderr
