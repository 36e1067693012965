"""Resumable download of a signed target over HTTP: Range requests into a ``.partial`` file.

The signed length caps what is read, so a hostile server cannot fill the disk; whoever calls
this checks the finished bytes against the signed hash. A server that ignores Range (answers
200) makes the download start over rather than fail. A JSON target (gate vectors) fetched from
its start asks for gzip and is inflated within the same cap; a resumed one asks for the plain
bytes from where its ``.partial`` ends.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from agent.updater.encoding import (
    ACCEPT_GZIP,
    EncodingError,
    TooLong,
    compressible,
    decoded_chunks,
)
from agent.updater.faults import hook

# The largest model a device takes unless configured otherwise; every download is capped by it.
DEFAULT_MAX_MODEL_BYTES = 64 * 1024 * 1024
CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class DownloadError(Exception):
    def __init__(self, message: str, reason: str, transient: bool = False):
        super().__init__(message)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class DownloadLimits:
    chunk_bytes: int = 16 * 1024
    timeout_s: float = 30.0


def target_url(repository: str, path: str, sha256: str) -> str:
    """Where a consistent-snapshot repository serves a target: ``<dir>/<sha256>.<file>``."""
    folder, _, name = path.rpartition("/")
    return f"{repository.rstrip('/')}/targets/{folder}/{sha256}.{name}"


def _offset(response: HTTPResponse, have: int) -> int | None:
    """Where the body starts in the file: 0 for a whole file, ``have`` for the asked-for range,
    None for a range that was not asked for."""
    if response.status != 206:
        return 0
    match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    return have if match and int(match.group(1)) == have else None


def fetch(url: str, partial: Path, length: int, limits: DownloadLimits) -> int:
    """Complete ``partial`` to ``length`` bytes from ``url``; returns the offset it resumed at."""
    have = partial.stat().st_size if partial.exists() else 0
    if have > length:
        partial.unlink()
        have = 0
    if have == length:
        return have
    headers = {"Range": f"bytes={have}-"} if have else ACCEPT_GZIP if compressible(url) else {}
    try:
        response = urlopen(Request(url, headers=headers), timeout=limits.timeout_s)
    except HTTPError as exc:
        if exc.code == 416:  # what we hold does not fit the file: start over next time
            partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: HTTP {exc.code}", "http-error", exc.code >= 500) from None
    except (URLError, OSError) as exc:
        raise DownloadError(f"{url}: {exc}", "unreachable", transient=True) from None
    with response:
        start = _offset(response, have)
        if start is None:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{url}: answered another range", "bad-range", transient=True)
        have = start
        body = decoded_chunks(response.read, response.headers, limits.chunk_bytes, length - start)
        try:
            with open(partial, "ab" if start else "wb") as handle:
                for chunk in body:
                    have += len(chunk)
                    handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
                    hook("download.partial")
        except TooLong:
            partial.unlink(missing_ok=True)
            raise DownloadError(
                f"{url}: longer than the signed {length} bytes", "too-long"
            ) from None
        except EncodingError as exc:  # what decoded stays: the signed hash judges it
            raise DownloadError(f"{url}: {exc}", "bad-encoding", transient=True) from None
        except (OSError, TimeoutError) as exc:
            raise DownloadError(f"{url}: {exc}", "unreachable", transient=True) from None
    if have < length:
        raise DownloadError(f"{url}: ended at {have} of {length} bytes", "short", transient=True)
    return start
