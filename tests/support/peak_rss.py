"""A child process's peak resident set, measured so that the parent's does not count.

Linux carries a process's peak RSS across ``exec`` from the memory it replaced, so a child
forked from a large process (pytest, a benchmark holding models) reports at least its parent's
size in ``wait4``. A small launcher forks and execs the command itself and reports the
command's ``ru_maxrss`` in a file: only the launcher's ~10 MiB can leak in.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass

_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


@dataclass(frozen=True)
class Measured:
    returncode: int
    output: str  # stdout and stderr together
    peak_bytes: int


def run_measured(command: list[str], **popen) -> Measured:
    """Run ``command`` (its first item an absolute path) and measure its peak RSS."""
    with tempfile.NamedTemporaryFile("r") as report, tempfile.TemporaryFile() as out:
        launcher = [sys.executable, "-c", _LAUNCHER, report.name, *command]
        subprocess.run(launcher, stdout=out, stderr=out, check=True, **popen)
        returncode, peak = (int(v) for v in report.read().split())
        out.seek(0)
        return Measured(returncode, out.read().decode(errors="replace"), peak)
