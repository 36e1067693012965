"""The console's configuration and its viewer token, through the real gateway process: a weak
or exposed viewer token stops the start with one line like the admin token, and the console's
TCP listener must be loopback."""

from __future__ import annotations

from tests.gateway.support import Gateway, gateway_config
from tests.gateway.test_admin_input import start_refused

TOKEN = b"k" * 43


def a_gateway(tmp_path, broker, viewer: bytes, mode: int = 0o600, **admin) -> Gateway:
    workdir = tmp_path / "gw"
    config = gateway_config(workdir, broker, None)
    config["admin"].update(admin)
    gateway = Gateway(workdir, config)
    data = workdir / "data"
    data.mkdir(parents=True)
    (data / "viewer.token").write_bytes(viewer)
    (data / "viewer.token").chmod(mode)
    return gateway


def test_a_weak_or_exposed_viewer_token_stops_the_start(tmp_path, broker):
    line = start_refused(a_gateway(tmp_path / "weak", broker, b"x" * 31 + b"\n"))
    assert line.startswith("edgefleet: error: viewer token ") and "viewer.token" in line
    line = start_refused(a_gateway(tmp_path / "open", broker, TOKEN, mode=0o644))
    assert "viewer token" in line and "readable by others (mode 0644)" in line


def test_the_console_listens_on_loopback_tcp_only(tmp_path, broker):
    for value, message in (
        ("0.0.0.0:8781", "loopback"),
        ("192.0.2.1:8781", "loopback"),
        ("unix:/tmp/console.sock", "browsers speak TCP"),
        ("localhost", "host:port"),
    ):
        gateway = a_gateway(tmp_path / str(abs(hash(value))), broker, TOKEN, console_listen=value)
        line = start_refused(gateway)
        assert "console_listen" in line and message in line, line
