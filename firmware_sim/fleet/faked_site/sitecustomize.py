"""Loaded by every Python process the simulator runs under libfaketime (it is on their
``PYTHONPATH``). libfaketime 0.9.10 turns Python 3.11's ``time.sleep`` (an absolute
``clock_nanosleep`` on the monotonic clock) into EINVAL when the monotonic clock is not faked;
this ``time.sleep`` waits in ``select`` on the real monotonic clock instead."""

import math
import select
import time


def _sleep(seconds: float) -> None:
    if math.isnan(seconds) or seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
