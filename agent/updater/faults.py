"""Fault injection: one choke point, ``hook(name)``, placed at every state save and every file
operation of download, install and switch.

When the environment variable ``EDGEFLEET_FAULT_HOOK`` names the hook, the process SIGKILLs
itself there, exactly as a power cut or an OOM kill would stop it. ``EDGEFLEET_FAULT_TRACE``
names a file to which every hook passed is appended, so a test can prove that a clean run
crosses every registered hook. Unset, a hook costs one dictionary lookup.

``EDGEFLEET_FAULT_CUT_FILE`` arms a hook while the process runs: when that file names the hook,
it is removed and the whole process group (the agent and its update worker) is SIGKILLed, which
is how the fleet simulator cuts power to a device in a chosen update state.

Where many agents share one process (the fleet simulator's light host), killing the process
would cut every device, so the settings are per device instead: ``DEVICE_FAULTS`` (a context
variable, which ``asyncio.to_thread`` carries into the threads a device's work runs in) holds
the device's cut file and how to cut its power, and ``STOP_AT_HOOK`` the flag of update work
run in a thread that is to end as a killed child would. A hook then raises ``Interrupted``
(a ``BaseException``, so no ``except Exception`` of the work catches it) where a process
would have died: the files are left exactly as a kill at that point leaves them.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

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
    "install.meta",  # what the targets key signed about the candidate, beside its slot
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


class Interrupted(BaseException):
    """Work in a thread stopped at a fault hook, where a process would have been killed."""


@dataclass(frozen=True)
class DeviceFaults:
    """One device's fault settings when it shares its process with other devices. ``cut`` is
    called from any thread and must only ask for the cut (the caller then stops at once);
    ``off`` is set once its power is cut, and stops its remaining work at the next hook."""

    cut_file: str
    cut: Callable[[], None]
    off: threading.Event = field(default_factory=threading.Event)


DEVICE_FAULTS: ContextVar[DeviceFaults | None] = ContextVar("device_faults", default=None)
STOP_AT_HOOK: ContextVar[threading.Event | None] = ContextVar("stop_at_hook", default=None)


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
    stop = STOP_AT_HOOK.get()
    if stop is not None and stop.is_set():
        raise Interrupted(name)
    device = DEVICE_FAULTS.get()
    if device is not None:
        if device.off.is_set():
            raise Interrupted(name)
        if _armed(device.cut_file, name):
            device.off.set()
            device.cut()
            raise Interrupted(name)
        return
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
