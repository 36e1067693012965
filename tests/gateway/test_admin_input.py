"""The admin API's token and what reaches it, through the real gateway process: a weak or
exposed token stops the start with one line, any malformed ``Authorization`` header is a 401
(never a 500 or a traceback), and a config nested too deep is one line naming the file."""

from __future__ import annotations

import socket
import subprocess

from hypothesis import given
from hypothesis import strategies as st

from gateway import admin_token
from tests.gateway.support import EDGEFLEET, Gateway, gateway_config

TOKEN = b"k" * 43


def start_refused(gateway: Gateway, timeout: float = 30.0) -> str:
    """Run the daemon expecting it to refuse the start; its stderr (one line)."""
    try:
        result = subprocess.run(
            [str(EDGEFLEET), "gateway", "run", "--config", str(gateway.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the gateway started instead of refusing") from None
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def a_gateway(tmp_path, broker, token: bytes, mode: int = 0o600) -> Gateway:
    workdir = tmp_path / "gw"
    gateway = Gateway(workdir, gateway_config(workdir, broker, None))
    token_file = workdir / "data" / "admin.token"
    token_file.parent.mkdir(parents=True)
    token_file.write_bytes(token)
    token_file.chmod(mode)
    return gateway


def test_a_weak_token_stops_the_start(tmp_path, broker):
    for weak in (b"", b"\n", b"   \n", b"\xc2\xa0\n", b"x" * 31 + b"\n", b" " + TOKEN[:40]):
        line = start_refused(a_gateway(tmp_path / str(len(list(tmp_path.iterdir()))), broker, weak))
        assert line.startswith("edgefleet: error: admin token ") and "admin.token" in line


def test_a_token_others_can_read_stops_the_start(tmp_path, broker):
    line = start_refused(a_gateway(tmp_path, broker, TOKEN + b"\n", mode=0o640))
    assert "readable by others (mode 0640)" in line


def raw_request(path, header: bytes) -> bytes:
    """One HTTP/1.1 request over the admin unix socket, bytes as given; the status line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(
            b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + header
            + b"\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_malformed_authorization_headers_are_401(tmp_path, broker):
    gateway = a_gateway(tmp_path, broker, TOKEN + b"\n").start()
    sock = gateway.workdir / "admin.sock"
    refused = [
        b"",
        b"Authorization: Bearer\r\n",
        b"Authorization: Bearer \xc2\xa0\r\n",
        b"Authorization: Bearer " + TOKEN + b"\xff\r\n",
        b"Authorization: Bearer \xff\xfe\xfd\r\n",
        b"Authorization: Basic " + TOKEN + b"\r\n",
        b"Authorization: bearer " + TOKEN + b"\r\n",
        b"Authorization: Bearer  " + TOKEN + b"\r\n",
        b"Authorization: Bearer " + TOKEN + b"\xc2\xa0\r\n",
        b"Authorization: Bearer " + TOKEN[:-1] + b"\r\n",
    ]
    for header in refused:
        assert raw_request(sock, header) == b"HTTP/1.1 401 Unauthorized", header
    good = b"Authorization: Bearer " + TOKEN + b"\r\n"
    assert raw_request(sock, good) == b"HTTP/1.1 200 OK"
    assert gateway.cli("status").returncode == 0
    assert gateway.stop() == 0
    assert "Traceback" not in gateway.log() and "Error handling request" not in gateway.log()


@given(st.text(st.characters(blacklist_categories=()), max_size=80))
def test_only_the_exact_header_is_authorized(text):
    assert admin_token.authorized(text, TOKEN) == (text == "Bearer " + TOKEN.decode())
    assert not admin_token.authorized("Bearer " + text, b"")
    assert not admin_token.authorized("Bearer " + text.strip(), b"   ")


def test_a_config_nested_too_deep_is_one_line(tmp_path, broker):
    config = tmp_path / "deep.toml"
    config.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    result = subprocess.run(
        [str(EDGEFLEET), "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"edgefleet: error: {config}: not valid TOML: nested too deep"
