"""Console sessions: a random id in an HttpOnly cookie, everything else on the server.

The token a person pasted is compared once, at sign-in, and never stored or sent back: the
cookie holds only a session id (32 random bytes), and the session holds the role and its own
CSRF token. Sessions end after ``idle_s`` without a request or ``max_age_s`` after sign-in,
whichever is first; the store keeps at most ``max_sessions`` (the oldest goes first), so a
flood of sign-ins cannot grow memory without bound. The clock is passed in, so the rules are
tested without waiting.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from enum import Enum

COOKIE = "edgefleet_console"
MAX_COOKIE_CHARS = 64  # a session id is 43; anything longer is not one of ours


class Role(Enum):
    OPERATOR = "operator"  # the admin token: may change things
    VIEWER = "viewer"  # the viewer token: reads only


def role_for(given: str, admin: bytes, viewer: bytes | None) -> Role | None:
    """The role a pasted token grants, or None. Both comparisons always run, in constant time
    on bytes, so the answer's timing says nothing about which token was close."""
    if not given.isascii() or len(given) > 4096:
        return None
    raw = given.strip().encode("ascii")
    is_admin = hmac.compare_digest(raw, admin)
    is_viewer = viewer is not None and hmac.compare_digest(raw, viewer)
    if is_admin:
        return Role.OPERATOR
    return Role.VIEWER if is_viewer else None


@dataclass
class Session:
    role: Role
    created: float
    seen: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def csrf_ok(self, given: str | None) -> bool:
        """The form's or header's CSRF token against this session's, in constant time."""
        if given is None or not given.isascii():
            return False
        return hmac.compare_digest(given.encode("ascii"), self.csrf.encode("ascii"))


@dataclass(frozen=True)
class SessionLimits:
    idle_s: float = 30 * 60
    max_age_s: float = 12 * 3600
    max_sessions: int = 1000


class SessionStore:
    """Session id -> session, in memory: a gateway restart signs everyone out."""

    def __init__(self, limits: SessionLimits | None = None):
        self.limits = limits or SessionLimits()
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, role: Role, now: float) -> tuple[str, Session]:
        while len(self._sessions) >= self.limits.max_sessions:
            del self._sessions[next(iter(self._sessions))]  # dicts keep insertion order
        sid = secrets.token_urlsafe(32)
        session = self._sessions[sid] = Session(role, now, now)
        return sid, session

    def get(self, sid: str | None, now: float) -> Session | None:
        """The live session for a cookie value, touched; None for anything else."""
        if not sid or len(sid) > MAX_COOKIE_CHARS:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if now - session.seen > self.limits.idle_s or now - session.created > self.limits.max_age_s:
            del self._sessions[sid]
            return None
        session.seen = now
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)
