"""How the update manager runs ``agent.updater.worker``: in a child process (the daemon's way),
or in a thread (many devices in one process, where 1,000 python children would measure process
start-up rather than the update). Both hand over the worker's lines as they come and return
``(exit code or None when stopped, stderr)``.

A thread cannot be killed. When its time is up or its caller is cancelled, ``in_thread`` sets
the worker's stop flag (``faults.STOP_AT_HOOK``): the worker raises at its next fault hook, that
is before its next file operation or saved state, exactly where a kill could have stopped a
child, and the caller waits until it has. Between two hooks the worker may still be in a
network read, which its own timeouts bound; so the stop takes up to that long, where a killed
child stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agent.updater import worker
from agent.updater.child import run_child
from agent.updater.faults import STOP_AT_HOOK, Interrupted

OnLine = Callable[[dict[str, Any]], None]
WorkerRunner = Callable[[Sequence[str], OnLine, float], Awaitable[tuple[int | None, str]]]


def in_child(python: str = sys.executable) -> WorkerRunner:
    """The worker as ``python -m agent.updater.worker ARGS`` (killed when stopped)."""

    async def run(args: Sequence[str], on_line: OnLine, limit_s: float) -> tuple[int | None, str]:
        return await run_child([python, "-m", "agent.updater.worker", *args], on_line, limit_s)

    return run


async def in_thread(args: Sequence[str], on_line: OnLine, limit_s: float) -> tuple[int | None, str]:
    """The worker's ``main`` in a thread of the default executor, its lines handed to
    ``on_line`` on the event loop in the order it emits them."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    errors = io.StringIO()

    def emit(line: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(on_line, line)

    def work() -> int | None:
        STOP_AT_HOOK.set(stop)  # in the thread's own copy of the caller's context
        try:
            return worker.main(list(args), emit, errors)
        except Interrupted:
            return None
        except SystemExit as exc:  # argparse refusing the arguments
            return exc.code if isinstance(exc.code, int) else 2

    done = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        async with asyncio.timeout(limit_s):
            code = await asyncio.shield(done)
    except TimeoutError:
        stop.set()
        await done
        return None, "worker timed out"
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await done
        raise
    return code, errors.getvalue()
