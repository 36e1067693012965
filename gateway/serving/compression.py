"""gzip for the repository's JSON: TUF metadata and gate vectors shrink to a sixth, and a device
fetches them on every update.

Each file is compressed once and kept while its inode, size and mtime stay the same (metadata
is replaced by rename, so a renewed ``timestamp.json`` is compressed anew). A request with
``Range`` gets the file as it is: its offsets are the file's. A client that does not ask for
gzip (an older agent) gets plain bytes.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from pathlib import Path

from aiohttp import web

COMPRESSED_SUFFIXES = (".json",)
ROOTS = ("metadata", "targets")
MAX_FILE_BYTES = 8 * 1024 * 1024  # bigger JSON goes out plain rather than held compressed
MAX_ENTRIES = 256


def accepts_gzip(header: str) -> bool:
    """``Accept-Encoding`` lists gzip (or ``*``) with a weight above zero."""
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        weight = params.strip().lower().removeprefix("q=").strip() if params else "1"
        try:
            return float(weight) > 0
        except ValueError:
            return False
    return False


class GzipCache:
    def __init__(self, repo_dir: Path):
        self.roots = {name: (repo_dir / name).resolve() for name in ROOTS}
        self._cache: OrderedDict[Path, tuple[tuple[int, int, int], bytes]] = OrderedDict()

    def _file(self, request: web.Request) -> Path | None:
        """The repository file a compressible GET names, or None (aiohttp answers it)."""
        if request.method not in ("GET", "HEAD") or "Range" in request.headers:
            return None
        if not accepts_gzip(request.headers.get("Accept-Encoding", "")):
            return None
        root, _, rest = request.path.lstrip("/").partition("/")
        if root not in self.roots or not rest.endswith(COMPRESSED_SUFFIXES):
            return None
        path = (self.roots[root] / rest).resolve()
        return path if self.roots[root] in path.parents else None

    def compressed(self, path: Path) -> bytes | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        if not path.is_file() or stat.st_size > MAX_FILE_BYTES:
            return None
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            self._cache.move_to_end(path)
            return cached[1]
        try:
            data = gzip.compress(path.read_bytes(), 9, mtime=0)
        except OSError:
            return None
        self._cache[path] = (key, data)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
        return data

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        path = self._file(request)
        body = self.compressed(path) if path is not None else None
        if body is None:
            return await handler(request)
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )
