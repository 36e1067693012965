"""A real HTTP server over a repository folder, on loopback, that an attack test can subvert:
replace the bytes served at a path, or append bytes to them."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RepositoryServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.overrides: dict[str, bytes] = {}  # URL path -> bytes served instead
        self.extra: dict[str, bytes] = {}  # URL path -> bytes appended
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path in server.overrides:
                    body = server.overrides[self.path]
                else:
                    file = (server.root / self.path.lstrip("/")).resolve()
                    if server.root.resolve() not in file.parents or not file.is_file():
                        self.send_error(404)
                        return
                    body = file.read_bytes()
                body += server.extra.get(self.path, b"")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> RepositoryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
