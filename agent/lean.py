"""An agent whose broker is ``mqtt://`` runs without the TLS stack.

``ssl`` loads libssl and libcrypto, and ``hashlib`` loads libcrypto again through ``_hashlib``
(OpenSSL's digests): ~4.5 MB of RSS that a plain-MQTT agent never uses. Python runs without both
as it does where it was built without OpenSSL: asyncio, paho, http.client and urllib find no
``ssl`` and offer no TLS; hashlib and hmac use Python's own SHA-2 (slower, and the daemon hashes
only a model file when it loads one; the update work, which hashes downloads, is a child process
with its own imports).

The choice must come before logging is set up (structlog imports asyncio, which imports ssl), so
``plain_mqtt`` reads ``mqtt.url`` with tomllib alone; the full loader checks the file after.
"""

from __future__ import annotations

import sys
import tomllib
import types
from pathlib import Path
from urllib.parse import urlsplit

TLS_MODULES = ("ssl", "_ssl", "_hashlib")


def plain_mqtt(path: Path) -> bool:
    """Whether the configuration at ``path`` names an ``mqtt://`` broker (anything unreadable
    answers False: the process keeps TLS, and the loader reports what is wrong)."""
    try:
        with path.open("rb") as file:
            url = tomllib.load(file)["mqtt"]["url"]
        return urlsplit(url).scheme == "mqtt"
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return False


def leave_out_tls() -> bool:
    """Make the TLS modules unimportable in this process; False if one is already loaded."""
    if any(sys.modules.get(name) is not None for name in TLS_MODULES):
        return False
    for name in TLS_MODULES:
        sys.modules[name] = None
    import asyncio  # noqa: F401  (asyncio, http.client, urllib: built for Python without ssl)

    sys.modules["ssl"] = stand_in()
    try:
        import aiomqtt  # noqa: F401
        import paho.mqtt.client  # noqa: F401
    finally:
        sys.modules["ssl"] = None
    return True


def stand_in() -> types.ModuleType:
    """The ``ssl`` paho and aiomqtt see: what they name on a plain connection, and nothing else.

    paho catches ``SSLWantReadError`` and ``SSLWantWriteError`` around every socket read and
    write (an ``except`` naming an attribute of None would itself fail, turning a closed socket
    into an AttributeError), and asks for TLS by name only in ``tls_set``, which then refuses;
    aiomqtt imports ssl only to name its types in annotations. Nothing raises these errors.
    """
    module = types.ModuleType("ssl", "no TLS in this process (agent.lean)")
    module.SSLError = type("SSLError", (OSError,), {"__module__": "ssl"})
    for name in ("SSLWantReadError", "SSLWantWriteError"):
        setattr(module, name, type(name, (module.SSLError,), {"__module__": "ssl"}))
    return module
