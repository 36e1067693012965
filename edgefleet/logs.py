"""structlog set-up: readable key=value lines on a terminal, one JSON object per line otherwise."""

from __future__ import annotations

import logging
import sys

LEAN_BLOCKED_MODULES = ("rich",)


def configure(level: str = "info", stream=None, lean: bool = False) -> None:
    """Route every edgefleet log line to ``stream`` (stderr by default).

    ``lean`` is for long-running device daemons: structlog imports rich when it is installed
    (~6 MB of RSS) only to format tracebacks on a terminal, which a service never has.
    """
    if lean:
        for name in LEAN_BLOCKED_MODULES:
            sys.modules.setdefault(name, None)
    import structlog

    stream = stream or sys.stderr
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if stream.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # Not cached: a module-level logger must follow a later configure() (a new stream), and
        # edgefleet's daemons log on state changes, not per record.
        cache_logger_on_first_use=False,
    )
