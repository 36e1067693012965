"""Fixtures for the gateway daemon's tests: a real cloud endpoint on loopback (plain or TLS with
a private CA), a factory for gateway processes that are stopped at teardown, and a release
repository with one signed model."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.releases.repository import Repository
from tests.gateway.release_support import sign
from tests.gateway.support import Cloud, Gateway, gateway_config
from tests.support.pki import TestCA


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    cloud = Cloud().start()
    yield cloud
    cloud.stop()


@pytest.fixture
def tls_cloud(tmp_path: Path) -> Iterator[tuple[Cloud, Path]]:
    """A cloud on https://localhost with a certificate from a private CA; yields (cloud, CA)."""
    ca = TestCA(tmp_path / "cloud-pki")
    server = ca.issue("localhost", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    cloud = Cloud(tls_context=context).start()
    yield cloud, ca.ca.cert
    cloud.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``make_gateway(broker, cloud_url, name="gw", **overrides)`` -> a started gateway."""
    gateways: list[Gateway] = []

    def make(broker, cloud_url: str | None, name: str = "gw", **overrides) -> Gateway:
        workdir = tmp_path / name
        gateway = Gateway(workdir, gateway_config(workdir, broker, cloud_url, **overrides))
        gateways.append(gateway)
        return gateway.start()

    yield make
    for gateway in gateways:
        if gateway.proc is not None and gateway.proc.poll() is None:
            gateway.kill()


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A repository with kws version 1 (float32) signed."""
    repo = Repository.init(tmp_path / "repo")
    sign(repo, "kws_f32_v1", "kws", 1)
    return repo
