"""Serial executors on a shared pool (many agents in one process): each runs its calls one at a
time and in order, like a thread of its own, and shuts down as ThreadPoolExecutor does."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest

from agent.threads import SerialExecutor


def test_calls_of_one_executor_run_in_order_and_never_overlap():
    before = threading.active_count()
    pool = ThreadPoolExecutor(4)
    executors = [SerialExecutor(pool) for _ in range(20)]
    busy = [False] * len(executors)
    seen: list[list[int]] = [[] for _ in executors]
    overlaps = []

    def call(index: int, seq: int) -> int:
        if busy[index]:
            overlaps.append(index)
        busy[index] = True
        time.sleep(0.0005)
        seen[index].append(seq)
        busy[index] = False
        return seq

    futures = [
        (seq, executor.submit(call, index, seq))
        for seq in range(30)
        for index, executor in enumerate(executors)
    ]
    assert all(future.result(10) == seq for seq, future in futures)
    assert overlaps == [] and all(calls == list(range(30)) for calls in seen)
    assert threading.active_count() - before <= 4  # 20 executors, 4 threads
    pool.shutdown()


def test_shutdown_waits_for_the_call_in_progress_and_can_drop_the_rest():
    pool = ThreadPoolExecutor(2)
    executor = SerialExecutor(pool)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "done"

    first = executor.submit(slow)
    queued = [executor.submit(lambda: "never") for _ in range(3)]
    started.wait(5)
    executor.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(lambda: None)
    release.set()
    executor.shutdown(wait=True)
    assert first.result(0) == "done"
    for future in queued:
        with pytest.raises(CancelledError):
            future.result(0)
    pool.shutdown()


def test_an_error_reaches_the_caller_and_the_next_call_still_runs():
    pool = ThreadPoolExecutor(1)
    executor = SerialExecutor(pool)
    failed = executor.submit(lambda: 1 / 0)
    after = executor.submit(lambda: "ran")
    with pytest.raises(ZeroDivisionError):
        failed.result(5)
    assert after.result(5) == "ran"
    executor.shutdown()
    pool.shutdown()
