"""Clocks that a scenario can move: the gateway and agent processes run under libfaketime, each
reading its offset from real time out of a file of its own, so a fault changes the time a
running process sees without restarting it.

* Only the wall clock moves (``DONT_FAKE_MONOTONIC``): asyncio timers, MQTT keepalives and
  timeouts stay on real monotonic time, as they do on a device whose NTP client jumps.
* libfaketime re-reads the file at most once a second (``FAKETIME_CACHE_DURATION``).
* libfaketime 0.9.10 (Debian 12) miscomputes ``clock_nanosleep(CLOCK_MONOTONIC,
  TIMER_ABSTIME)`` when the monotonic clock is left alone and the call fails with EINVAL;
  Python 3.11's ``time.sleep`` makes exactly that call. ``faked_site/sitecustomize.py``, put on
  the faked processes' ``PYTHONPATH`` (and so on their children's), gives them a ``time.sleep``
  that waits in ``select`` instead.

The broker and the cloud stay on real time: they are not on the site.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from edgefleet.fsio import atomic_write_bytes

FAKED_SITE = Path(__file__).with_name("faked_site")
LIBRARY_GLOBS = (
    "/usr/lib/*-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


class ClockError(RuntimeError):
    """libfaketime is not installed."""


def find_libfaketime() -> Path:
    for pattern in LIBRARY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    raise ClockError("libfaketime is not installed (apt-get install libfaketime)")


def offset_text(seconds: float) -> str:
    """libfaketime's relative form: ``+0``, ``+3888000``, ``-7200``."""
    whole = round(seconds)
    return f"+{whole}" if whole >= 0 else str(whole)


class ClockFile:
    """The offset one process (or a group of them) sees, from real time."""

    def __init__(self, path: Path, library: Path) -> None:
        self.path, self.library = path, library
        self.offset_s = 0.0
        self.set(0.0)

    def set(self, seconds: float) -> None:
        self.offset_s = seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, (offset_text(seconds) + "\n").encode())

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the clock faked."""
        env = dict(os.environ if base is None else base)
        path = [str(FAKED_SITE), *filter(None, [env.get("PYTHONPATH")])]
        preload = [str(self.library), *filter(None, [env.get("LD_PRELOAD")])]
        return env | {
            "LD_PRELOAD": " ".join(preload),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": "1",
            "DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": os.pathsep.join(path),
        }


class SiteClocks:
    """The site's clock (gateway and devices) and each device's own skew on top of it."""

    def __init__(self, workdir: Path) -> None:
        self.library = find_libfaketime()
        self.workdir = workdir
        self.site_s = 0.0
        self.skews: dict[str, float] = {}
        self.gateway = ClockFile(workdir / "gateway.offset", self.library)
        self.devices: dict[str, ClockFile] = {}

    def device(self, name: str) -> ClockFile:
        if name not in self.devices:
            self.devices[name] = ClockFile(self.workdir / f"{name}.offset", self.library)
            self.devices[name].set(self.site_s + self.skews.get(name, 0.0))
        return self.devices[name]

    def jump(self, seconds: float) -> None:
        """The whole site's clock moves forward by ``seconds`` from now on."""
        self.site_s += seconds
        self._write()

    def skew(self, names: list[str], seconds: float) -> None:
        """These devices' clocks are ``seconds`` off the site's (0: back in step)."""
        for name in names:
            self.skews[name] = seconds
        self._write()

    def _write(self) -> None:
        self.gateway.set(self.site_s)
        for name, clock in self.devices.items():
            clock.set(self.site_s + self.skews.get(name, 0.0))
