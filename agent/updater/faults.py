"""Fault injection: one choke point, ``hook(name)``, placed at every state save and every file
operation of download, install and switch.

When the environment variable ``EDGEFLEET_FAULT_HOOK`` names the hook, the process SIGKILLs
itself there, exactly as a power cut or an OOM kill would stop it. ``EDGEFLEET_FAULT_TRACE``
names a file to which every hook passed is appended, so a test can prove that a clean run
crosses every registered hook. Unset, a hook costs one dictionary lookup.

``EDGEFLEET_FAULT_CUT_FILE`` arms a hook while the process runs: when that file names the hook,
it is removed and the whole process group (the agent and its update worker) is SIGKILLed, which
is how the fleet simulator cuts power to a device in a chosen update state.
"""

from __future__ import annotations

import os
import signal

from agent.updater.states import BEFORE_SWITCH, State

HOOK_ENV = "EDGEFLEET_FAULT_HOOK"
TRACE_ENV = "EDGEFLEET_FAULT_TRACE"
CUT_FILE_ENV = "EDGEFLEET_FAULT_CUT_FILE"

# The steps of one atomic file replacement (temp file, rename, directory fsync).
ATOMIC_STEPS = ("tmp_written", "renamed", "dir_synced")
SAVED_STATES = (
    *sorted(BEFORE_SWITCH),
    State.TRIAL,
    State.COMMITTED,
    State.ROLLED_BACK,
    State.REFUSED,
)
ATOMIC_FILES = (
    "vectors",  # the verified health-gate vectors in the work folder
    "evaluation",  # the verified evaluation set in the work folder
    "candidate",  # the verified candidate model in the work folder
    "install",  # the candidate written into the inactive slot
    "pointer.switch",  # active pointer -> candidate, incumbent kept as previous
    "pointer.commit",  # active pointer -> candidate, previous dropped
    "pointer.rollback",  # active pointer -> incumbent
    "versions",  # the highest committed version per name, after a commit
    *(f"state.{state.value}" for state in SAVED_STATES),
)
HOOKS: frozenset[str] = frozenset(
    {"download.partial"} | {f"{name}.{step}" for name in ATOMIC_FILES for step in ATOMIC_STEPS}
)


def hook(name: str) -> None:
    """Pass the fault point ``name`` (which must be registered)."""
    if name not in HOOKS:
        raise RuntimeError(f"unregistered fault hook {name!r}")
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as handle:
            handle.write(name + "\n")
    if os.environ.get(HOOK_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    cut_file = os.environ.get(CUT_FILE_ENV)
    if cut_file and _armed(cut_file, name):
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _armed(path: str, name: str) -> bool:
    try:
        with open(path) as handle:
            if handle.read().strip() != name:
                return False
        os.unlink(path)
    except OSError:
        return False
    return True
