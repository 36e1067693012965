"""The admin API's bearer token (and the console's viewer token, held to the same rules):
created once, then read back exactly, by the daemon and the CLI.

The file holds the token and at most one trailing newline; nothing else is stripped, so what
the daemon compares is exactly what the file says. A token too short to resist guessing, or a
file others can read, stops the gateway with one line instead of serving a weak secret.
"""

from __future__ import annotations

import hmac
import secrets
import stat
from pathlib import Path

from edgefleet.errors import UserError
from edgefleet.fsio import atomic_write_bytes

MIN_LENGTH = 32
MAX_LENGTH = 4096
SCHEME = "Bearer "


def ensure(path: Path, what: str = "admin token") -> bytes:
    """The token, created (mode 0600) when the file does not exist yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, secrets.token_urlsafe(32).encode() + b"\n", mode=0o600)
    return read(path, what)


def read(path: Path, what: str = "admin token") -> bytes:
    """The token as bytes, or a one-line ``UserError`` saying why it cannot be used."""
    try:
        info = path.stat()
        raw = path.read_bytes()[: MAX_LENGTH + 2]
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"{what} {path}: readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            "chmod 600 it"
        )
    token = raw.removesuffix(b"\n")
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise UserError(f"{what} {path}: must be printable ASCII without spaces")
    if not MIN_LENGTH <= len(token) <= MAX_LENGTH:
        raise UserError(
            f"{what} {path}: must be {MIN_LENGTH} to {MAX_LENGTH} characters, not {len(token)}"
        )
    return token


def authorized(header: str | None, token: bytes) -> bool:
    """``Authorization: Bearer <token>``, compared exactly in constant time. A header that is
    missing, of another scheme, or not ASCII (aiohttp hands undecodable bytes on as surrogates)
    is refused, never an error."""
    if len(token) < MIN_LENGTH or header is None or not header.startswith(SCHEME):
        return False
    given = header[len(SCHEME) :]
    if not given.isascii():
        return False
    return hmac.compare_digest(given.encode("ascii"), token)
