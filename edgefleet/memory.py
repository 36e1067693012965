"""glibc's malloc, told how a long-running device process allocates.

By default each thread that allocates gets a malloc arena of its own (up to eight per core), and
each arena keeps what its thread freed: ~1.2 MB of RSS in the agent, whose few threads allocate
little. Two arenas serve them as fast. The agent's systemd unit sets ``MALLOC_ARENA_MAX=2`` as
well; this covers an agent started any other way. Elsewhere than glibc, nothing changes.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(count: int) -> bool:
    """At most ``count`` malloc arenas from now on (call it before threads start); False where
    the C library does not take the setting."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_ARENA_MAX, count) == 1
