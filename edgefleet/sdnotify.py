"""systemd's notify protocol: datagrams of ``KEY=value`` lines to ``$NOTIFY_SOCKET``.

Both daemons run as ``Type=notify`` services with a watchdog (docs/install.md). Without
``NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ):
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    def send(self, **fields: str) -> None:
        """``send(READY="1", STATUS="...")``; a failed send is ignored (systemd may be gone)."""
        if self._sock is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        with contextlib.suppress(OSError):
            self._sock.sendto(message, self._address)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


async def watchdog(notifier: Notifier, status: Callable[[], str]) -> None:
    """Ping every ``WatchdogSec/2`` from the event loop, so a wedged loop gets restarted."""
    if notifier.watchdog_s is None:
        return
    while True:
        notifier.send(WATCHDOG="1", STATUS=status())
        await asyncio.sleep(notifier.watchdog_s / 2)
