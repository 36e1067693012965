"""CPU and memory of the site's processes (the gateway, the broker) over a run, sampled from
``/proc`` once a second: what a fleet of a given size costs the site.

A process the run replaced (a gateway a fault killed) keeps the CPU it used up to its last
sample; the peak resident set is the largest any of them reached (``VmHWM``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 1.0


def stat_fields(path: str) -> list[bytes]:
    """The fields of a ``/proc/<pid>/stat`` (or ``task/<tid>/stat``) after the command name,
    the first being the state: ``fields[11]`` and ``[12]`` are utime and stime, ``[17]`` the
    thread count. ``OSError`` when the process is gone."""
    with open(path, "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()


def stat_cpu_seconds(fields: list[bytes]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of ``pid`` so far, or None when it is gone."""
    try:
        return stat_cpu_seconds(stat_fields(f"/proc/{pid}/stat"))
    except OSError:
        return None


def peak_rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Usage:
    """One role's processes: CPU seconds summed over them, the largest peak RSS."""

    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0

    def sample(self, pid: int) -> None:
        cpu = cpu_seconds(pid)
        if cpu is not None:
            self.cpu_by_pid[pid] = cpu
        self.peak_rss = max(self.peak_rss, peak_rss_bytes(pid) or 0)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_by_pid.values())


class UsageSampler:
    """``pids()`` names each role's current process (None while it is down)."""

    def __init__(self, pids: Callable[[], dict[str, int | None]]) -> None:
        self.pids = pids
        self.usage: dict[str, Usage] = {}
        self.started: float | None = None  # monotonic, the first sample

    def sample(self) -> None:
        if self.started is None:
            self.started = time.monotonic()
        for role, pid in self.pids().items():
            if pid is not None:
                self.usage.setdefault(role, Usage()).sample(pid)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S)

    def report(self) -> dict:
        """``<role>_cpu_s``, ``<role>_cpu_percent`` of one core since the first sample, and
        ``<role>_rss_mb_peak``, for each role seen."""
        self.sample()
        seconds = time.monotonic() - (self.started or time.monotonic())
        figures: dict[str, float] = {}
        for role, usage in sorted(self.usage.items()):
            figures[f"{role}_cpu_s"] = round(usage.cpu_s, 1)
            figures[f"{role}_cpu_percent"] = round(100 * usage.cpu_s / seconds, 1) if seconds else 0
            figures[f"{role}_rss_mb_peak"] = round(usage.peak_rss / 2**20, 1)
        return figures
