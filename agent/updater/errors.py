"""How an update step can end other than by moving on: one root, three kinds.

A refusal is a verdict about the offered update (the health gate, a downgrade, a name the device
may not run, metadata that does not describe it): it ends the update, and the rollout counts it.
A transient failure is about the way there (the repository unreachable, metadata stale,
replayed or expired, bytes whose hash or length do not match): the saved state stays, and the
update is tried again, with a fresh refresh, while the offer stands.
"""


class UpdateError(Exception):
    """Why an update step did not move on; ``reason`` is a short word for reports."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class Busy(UpdateError):
    """Another update is under way; it must end before a different one starts."""


class Transient(UpdateError):
    """The way to the update failed; the saved state stays, to resume later."""


class Refused(UpdateError):
    """The offered update must not be installed; the message says why."""
