"""One backoff for every retry loop: the broker link, the cloud uplink, a blocked update."""

from __future__ import annotations

from collections.abc import Callable


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    return rand() * min(cap, base * 2.0 ** min(attempt, 32))
