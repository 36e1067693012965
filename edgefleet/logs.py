"""structlog set-up: readable key=value lines on a terminal, one JSON object per line otherwise.

Libraries that log through the standard library (aiohttp's server errors, asyncio's "Task
exception was never retrieved", paho) go through the same renderer, so a daemon's stderr is
JSON from its first line to its last when it is not a terminal."""

from __future__ import annotations

import logging
import sys

LEAN_BLOCKED_MODULES = ("rich",)


def configure(level: str = "info", stream=None, lean: bool = False, fmt: str | None = None) -> None:
    """Route every log line to ``stream`` (stderr by default).

    ``fmt`` is ``"json"`` or ``"console"``; None picks console on a terminal, JSON otherwise.
    ``lean`` is for long-running device daemons: structlog imports rich when it is installed
    (~6 MB of RSS) only to format tracebacks on a terminal, which a service never has.
    """
    if lean:
        for name in LEAN_BLOCKED_MODULES:
            sys.modules.setdefault(name, None)
    import structlog

    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    number = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # Not cached: a module-level logger must follow a later configure() (a new stream), and
        # edgefleet's daemons log on state changes, not per record.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                structlog.stdlib.ExtraAdder(),
                stamp,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries speak at warning and above (as Python's last-resort handler let them before),
    # and all of them at debug: paho's per-packet lines are not an info-level event.
    root.setLevel(number if number <= logging.DEBUG else max(number, logging.WARNING))
