"""Metadata and gate vectors travel gzip-compressed when both ends speak it, plain otherwise,
and a device inflates what it is sent only within its bounds: the gateway's repository server
and hostile HTTP servers on loopback, the agent's own fetch paths."""

from __future__ import annotations

import gzip
import os
import threading
import tracemalloc
import zlib
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.trust import TrustedRepository, TrustError
from agent.updater.download import DownloadError, DownloadLimits, fetch, target_url
from agent.updater.encoding import EncodingError, TooLong, decoded_chunks
from agent.updater.states import State
from gateway.serving.compression import accepts_gzip
from tests.support.http_repo import RepositoryServer as PlainServer
from tests.updater.test_update_path import update

BOMB_BYTES = 256 * 1024 * 1024  # inflated size; ~250 KB on the wire


def get(url: str, **headers: str):
    with urlopen(Request(url, headers=headers), timeout=10) as response:
        return response.status, response.headers, response.read()


def gate_target(world, tmp_path: Path) -> tuple[str, int, str]:
    """(path, length, sha256) of the gate vectors a device fetches for kws v2 (the compact
    encoding), as the signed metadata has them."""
    trust = TrustedRepository(tmp_path / "probe-tuf", world.url, world.root)
    meta = trust.target("kws/2.tflite").model_meta()
    assert meta.gate.compact is not None
    gate = trust.target(meta.gate.compact.path)
    return gate.path, gate.length, gate.sha256


class BombServer:
    """Serves a repository folder plainly, except ``bomb_path``: a small gzip body that
    inflates to ``BOMB_BYTES`` zeros, labelled ``Content-Encoding: gzip``."""

    def __init__(self, root: Path, bomb_path: str):
        body = gzip.compress(bytes(BOMB_BYTES), 9)
        self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == bomb_path:
                    data, encoded = body, True
                else:
                    file = root / self.path.lstrip("/")
                    if not file.is_file():
                        self.send_error(404)
                        return
                    data, encoded = file.read_bytes(), False
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                if encoded:
                    self.send_header("Content-Encoding", "gzip")
                self.end_headers()
                try:
                    self.wfile.write(data)
                    server.sent += len(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()


# -- the gateway's server -----------------------------------------------------------------------


def test_metadata_goes_out_gzipped_to_a_client_that_asks(world):
    url = f"{world.url}/metadata/timestamp.json"
    plain = (world.repo.dir / "metadata" / "timestamp.json").read_bytes()
    _, headers, body = get(url, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == plain
    snapshot = next((world.repo.dir / "metadata").glob("*.targets.json"))
    _, headers, body = get(f"{world.url}/metadata/{snapshot.name}", **{"Accept-Encoding": "gzip"})
    assert gzip.decompress(body) == snapshot.read_bytes() and len(body) < snapshot.stat().st_size


def test_an_old_agent_gets_plain_bytes(world):
    """No Accept-Encoding (an agent from before), or gzip refused with q=0."""
    plain = (world.repo.dir / "metadata" / "timestamp.json").read_bytes()
    for headers in ({}, {"Accept-Encoding": "gzip;q=0"}, {"Accept-Encoding": "identity"}):
        status, answer, body = get(f"{world.url}/metadata/timestamp.json", **headers)
        assert status == 200 and "Content-Encoding" not in answer and body == plain


def test_ranges_and_models_are_never_compressed(world, tmp_path):
    release = next(r for r in world.repo.releases() if r.version == 2)
    model = target_url(world.url, "kws/2.tflite", release.sha256)
    _, headers, body = get(model, **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in headers and len(body) == release.length
    path, length, sha = gate_target(world, tmp_path)
    status, headers, body = get(
        target_url(world.url, path, sha), **{"Accept-Encoding": "gzip", "Range": "bytes=10-"}
    )
    assert status == 206 and "Content-Encoding" not in headers and len(body) == length - 10


def test_a_replaced_file_is_compressed_anew(tmp_path):
    from tests.updater.support import served

    (tmp_path / "metadata").mkdir()
    (tmp_path / "targets").mkdir()
    file = tmp_path / "metadata" / "timestamp.json"
    file.write_text('{"version": 1}')
    with served(tmp_path) as url:
        first = get(f"{url}/metadata/timestamp.json", **{"Accept-Encoding": "gzip"})[2]
        (tmp_path / "new.json").write_text('{"version": 2, "renewed": true}')
        os.replace(tmp_path / "new.json", file)
        second = get(f"{url}/metadata/timestamp.json", **{"Accept-Encoding": "gzip"})[2]
    assert gzip.decompress(first) == b'{"version": 1}'
    assert gzip.decompress(second) == b'{"version": 2, "renewed": true}'


# -- the device ----------------------------------------------------------------------------------


def test_gate_vectors_arrive_compressed_and_whole(world, tmp_path):
    path, length, sha = gate_target(world, tmp_path)
    url = target_url(world.url, path, sha)
    assert get(url, **{"Accept-Encoding": "gzip"})[1]["Content-Encoding"] == "gzip"
    fetch(url, tmp_path / "gate.partial", length, DownloadLimits())
    assert (tmp_path / "gate.partial").read_bytes() == get(url)[2]


def test_an_update_through_a_server_that_ignores_accept_encoding(world, tmp_path):
    state_dir = world.device(tmp_path)
    with PlainServer(world.repo.dir) as server:
        assert update(state_dir, server.url, world.root, "kws/2.tflite").state == State.TRIAL


def test_a_gzip_bomb_for_metadata_is_refused_at_the_bound(world, tmp_path):
    """timestamp.json answered by 250 KB that inflate to 256 MB: python-tuf stops at its 16 KB
    limit for the file, and the device never holds more than a chunk of the inflated bytes."""
    bomb = BombServer(world.repo.dir, "/metadata/timestamp.json")
    tracemalloc.start()
    try:
        with pytest.raises(TrustError) as refused:
            TrustedRepository(world.device(tmp_path) / "update" / "tuf", bomb.url, world.root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        bomb.close()
    assert refused.value.reason == "too-long", refused.value
    assert peak < 4 * 1024 * 1024


def test_a_gzip_bomb_for_gate_vectors_is_refused_at_the_signed_length(world, tmp_path):
    path, length, sha = gate_target(world, tmp_path)
    url_path = target_url("", path, sha)
    bomb = BombServer(world.repo.dir, url_path)
    tracemalloc.start()
    try:
        with pytest.raises(DownloadError) as refused:
            fetch(bomb.url + url_path, tmp_path / "gate.partial", length, DownloadLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        bomb.close()
    assert refused.value.reason == "too-long" and not (tmp_path / "gate.partial").exists()
    assert peak < 4 * 1024 * 1024


# -- decoding, as a property ---------------------------------------------------------------------


def headers(encoding: str | None) -> Message:
    message = Message()
    if encoding:
        message["Content-Encoding"] = encoding
    return message


def reader(data: bytes):
    view = memoryview(data)
    offset = 0

    def read(n: int) -> bytes:
        nonlocal offset
        piece = bytes(view[offset : offset + n])
        offset += len(piece)
        return piece

    return read


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(1, 512), st.integers(0, 8192))
def test_gzip_decodes_to_the_original_within_chunks_and_cap(data, chunk, cap):
    try:
        pieces = list(decoded_chunks(reader(gzip.compress(data)), headers("gzip"), chunk, cap))
    except TooLong:
        assert len(data) > cap
        return
    assert b"".join(pieces) == data and all(len(p) <= chunk for p in pieces)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from(["gzip", "x-gzip", None, "br", "GZIP "]))
def test_any_body_decodes_within_its_cap_or_is_refused_in_one_line(body, encoding):
    try:
        out = b"".join(decoded_chunks(reader(body), headers(encoding), 64, 1024))
    except EncodingError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert len(out) <= 1024


def test_a_truncated_or_trailing_gzip_stream_is_refused():
    whole = gzip.compress(b"x" * 1000)
    with pytest.raises(EncodingError, match="ends before"):
        list(decoded_chunks(reader(whole[:-8]), headers("gzip"), 64, 10_000))
    with pytest.raises(EncodingError, match="after the end"):
        list(decoded_chunks(reader(whole + whole), headers("gzip"), len(whole), 10_000))
    with pytest.raises(EncodingError, match="corrupt"):
        raw = zlib.compress(b"y" * 100)
        list(decoded_chunks(reader(raw), headers("gzip"), 64, 10_000))


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("", False),
        ("gzip;q=abc", False),
    ],
)
def test_accept_encoding_is_read_with_its_weights(header, accepted):
    assert accepts_gzip(header) is accepted
