"""Fixtures shared by the whole suite: real mosquitto brokers and the bundled models, and no
agent process that outlives its test, whatever the outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import settings

from edgefleet.models import model_path
from firmware_sim.broker import BrokerConfig, BrokerTLS, Mosquitto, free_port
from tests.support.pki import TestCA

GATEWAY_USER = ("gateway", "gateway-test-password")

# Property tests check behaviour, not speed (bench/ measures that): no per-example deadline,
# which a busy machine would turn into failures.
settings.register_profile("edgefleet", deadline=None)
settings.load_profile("edgefleet")


@pytest.fixture(autouse=True)
def _fresh_logging():
    """A command run in-process configures structlog with the stream of that moment (a capture
    that pytest closes afterwards); start every test from the defaults again."""
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def reap_agents():
    yield
    from tests.agent.agent_support import AgentProcess  # it imports this module

    while AgentProcess.running:
        AgentProcess.running.pop().kill()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start real mosquitto brokers on free loopback ports; all are stopped at teardown.

    ``make_broker(tls=True)`` adds a TLS listener that requires client certificates issued by
    ``broker.ca`` (a ``TestCA``); the gateway user/password is ``GATEWAY_USER``.
    """
    brokers: list[Mosquitto] = []

    def make(tls: bool = False, topic_root: str = "edgefleet") -> Mosquitto:
        workdir = tmp_path / f"broker{len(brokers)}"
        workdir.mkdir()
        tls_config = None
        ca = None
        if tls:
            ca = TestCA(workdir / "pki")
            server = ca.issue("localhost", server=True)
            tls_config = BrokerTLS(ca.ca.cert, server.cert, server.key)
        broker = Mosquitto(
            BrokerConfig(
                workdir=workdir,
                port=free_port(),
                topic_root=topic_root,
                users=dict([GATEWAY_USER]),
                tls=tls_config,
            )
        )
        broker.ca = ca
        broker.start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def broker(make_broker) -> Mosquitto:
    """One plain (no TLS) real mosquitto on a free loopback port."""
    return make_broker()


@pytest.fixture(scope="session")
def models() -> Callable[[str], Path]:
    """``models("kws_f32_v1")`` -> path of a bundled real .tflite model."""
    return model_path
