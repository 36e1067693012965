"""The thread a part of the agent runs its blocking calls in, one call at a time and in order (a
SQLite connection, the records stage of the pipeline).

An agent process gives each such part a thread of its own. A process hosting hundreds of agents
(the fleet simulator's light host) calls ``share`` once, and each part then gets a
``SerialExecutor``: the same order, one call at a time, on a pool the whole process shares, so
1,000 agents do not mean thousands of threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

_shared: ThreadPoolExecutor | None = None


def share(threads: int) -> None:
    """From now on ``serial`` hands out turns on one pool of ``threads`` threads."""
    global _shared
    _shared = ThreadPoolExecutor(threads, thread_name_prefix="serial")


def serial(name: str) -> Executor:
    """An executor that runs one call at a time, in the order submitted."""
    if _shared is None:
        return ThreadPoolExecutor(1, thread_name_prefix=name)
    return SerialExecutor(_shared)


class SerialExecutor(Executor):
    """Calls run one at a time, in order, each on whichever thread of ``pool`` is free; the
    ``shutdown`` of ``ThreadPoolExecutor`` (wait for the call in progress, optionally cancel
    the waiting ones)."""

    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: deque[tuple[Future, Callable[[], Any]]] = deque()
        self._running = False
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append((future, lambda: fn(*args, **kwargs)))
            if not self._running:
                self._running = True
                self._pool.submit(self._drain)
        return future

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    self._idle.notify_all()
                    return
                future, call = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001
                future.set_exception(exc)  # the caller's to see, as ThreadPoolExecutor does
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            if wait:
                self._idle.wait_for(lambda: not self._running)
