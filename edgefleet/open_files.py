"""A site's processes hold a socket per client and a few files per device: the gateway's
repository server answers hundreds of devices at once, and a light host of the fleet simulator
holds hundreds of devices' MQTT sessions and spools. The soft limit on open files (often 1,024)
would fail them at a few hundred devices; the hard limit is what the system allows."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # kept as it was: the process still runs, with fewer files
    return soft
