"""Errors of the operator's tooling: each message names the file or value that is wrong."""

import math

from edgefleet.errors import UserError


class ReleaseError(UserError):
    """A release or repository operation refused; the repository is left as it was."""


def check_range(option: str, value: float, low: float, high: float) -> None:
    """Refuse a value outside [low, high] (or not a finite number), naming the option."""
    finite = isinstance(value, int) or math.isfinite(value)
    if not (finite and low <= value <= high):
        raise ReleaseError(
            f"{option} must be from {_text(low)} to {_text(high)}, not {_text(value)}"
        )


def _text(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
