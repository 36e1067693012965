"""Native runtimes (LiteRT's C++ core) write to file descriptor 2 directly, past Python's
logging: "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." before any error, and a plain
text line among a daemon's JSON ones. TF_CPP_MIN_LOG_LEVEL does not reach ai-edge-litert's
logger, so what the runtime writes while it loads a model is caught at the descriptor and
logged at debug level (edgefleet.logs renders it like every other line); lines that are not
the runtime's (another thread's log lines) are written back unchanged.

fd 2 belongs to the whole process: one body catches it at a time, or a second one would save
the first one's sink as "the" stderr and put it back last, and every later line would vanish.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The standard library's logger, not structlog's: a process that never configured logging (the
# update worker, whose stdout is its protocol) then drops the line instead of printing it.
log = logging.getLogger("edgefleet.runtime")

RUNTIME_LINE = re.compile(rb"^(INFO|WARNING|ERROR|VERBOSE): ")
MAX_CAPTURED = 64 * 1024
_FD2 = threading.RLock()


@contextmanager
def runtime_output_logged(what: str) -> Iterator[None]:
    """Run the body with fd 2 caught; the runtime's lines go to the debug log as ``what``."""
    with _FD2, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured = sink.read(MAX_CAPTURED)
            _route(captured, what)


def _route(captured: bytes, what: str) -> None:
    runtime: list[str] = []
    for line in captured.splitlines(keepends=True):
        if RUNTIME_LINE.match(line):
            runtime.append(line.decode(errors="replace").rstrip())
        else:
            os.write(2, line)
    if runtime:
        log.debug("runtime_output", extra={"source": what, "lines": runtime})
