"""How an update step can end other than by moving on."""


class Busy(Exception):
    """Another update is under way; it must end before a different one starts."""


class Transient(Exception):
    """The repository could not be reached; the saved state stays, to resume later."""


class Refused(Exception):
    """The offered update must not be installed; the message says why."""
