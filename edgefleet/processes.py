"""Children that must not outlive the process that started them (a simulated site's broker,
gateway and agents): however the parent dies, even by SIGKILL, the kernel kills them too."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: SIGKILL this child when the thread that started
    it ends (Linux ``PR_SET_PDEATHSIG``), so start such children from a long-lived thread."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
