"""Counting bad input (malformed commands, sensor lines that do not parse, a broken model file)
and logging each distinct reason once, so a noisy peer cannot flood the log."""

from __future__ import annotations

from collections import Counter

import structlog

MAX_REASONS = 256

log = structlog.get_logger()


class BadInput:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._seen: set[tuple[str, str]] = set()

    def record(self, category: str, reason: str, **context) -> None:
        """Count one fault; log it if this (category, reason) is new."""
        self.counts[category] += 1
        key = (category, reason[:200])
        if key not in self._seen and len(self._seen) < MAX_REASONS:
            self._seen.add(key)
            log.warning("bad_input", category=category, reason=reason[:200], **context)
