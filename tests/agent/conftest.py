"""Agent test fixtures: no agent process outlives its test, whatever the outcome."""

from __future__ import annotations

import pytest

from tests.agent.agent_support import AgentProcess


@pytest.fixture(autouse=True)
def reap_agents():
    yield
    while AgentProcess.running:
        AgentProcess.running.pop().kill()
