"""A site process raises its own limit on open files to what the system allows."""

from __future__ import annotations

import resource
import subprocess
import sys


def lower_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def test_the_soft_limit_is_raised_to_the_hard_one():
    code = (
        "import resource\n"
        "from edgefleet.open_files import raise_open_files_limit\n"
        "before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "print(before, raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=lower_soft_limit
    )
    before, returned, soft, hard = (int(v) for v in done.stdout.split())
    assert before == 256 and returned == soft == hard
