"""Errors of the operator's tooling: each message names the file or value that is wrong."""

from edgefleet.errors import UserError


class ReleaseError(UserError):
    """A release or repository operation refused; the repository is left as it was."""
