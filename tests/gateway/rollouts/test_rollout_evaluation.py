"""A release signed below its evaluation minimum (``--sign-below-minimum``, for experiments) is
never rolled out: a real gateway process serving the operator's import answers ``rollout
start`` with 409 and one line, and offers nothing; a release that passed its evaluation rolls
out as any other."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
import numpy as np
import pytest

from edgefleet.models import bands, model_path
from gateway import admin_token
from gateway import config as gateway_config
from gateway.releases.model_inspect import ReleaseOptions, build_model_meta, read_model
from gateway.releases.repository import Repository
from tests.gateway.rollouts.rollout_support import (
    cli,
    cli_json,
    import_release,
    wait_inventory,
)
from tests.gateway.rollouts.test_rollouts import fleet, start_gateway  # noqa: F401 (fixtures)
from tests.gateway.support import wait_for

QUICK = ReleaseOptions(samples=8, gate_samples=4)


def sign_evaluated(repo: Repository, model: str, version: int, shift: float, below: bool):
    """``release add --eval-set --min-accuracy 0.9`` on banded inputs (``shift`` -1.5: about
    60 % for every bundled model; 0: about 100 %)."""
    inputs, labels = bands.make(np.random.default_rng(version), 200, shift)
    path = repo.dir.parent / f"eval{version}.npz"
    np.savez(path, inputs=inputs, labels=labels)
    options = replace(QUICK, eval_set=path, min_accuracy=0.9, sign_below_minimum=below)
    data = read_model(model_path(model))
    inspected = build_model_meta(data, "kws", version, options)
    return repo.add_release(inspected.meta, data, inspected.gate, None, inspected.eval_bytes)


@pytest.fixture
def operator(tmp_path):
    """v1 (no evaluation), v2 signed below its minimum, v3 above it."""
    repo = Repository.init(tmp_path / "operator")
    inspected = build_model_meta(read_model(model_path("kws_f32_v1")), "kws", 1, QUICK)
    repo.add_release(inspected.meta, read_model(model_path("kws_f32_v1")), inspected.gate)
    sign_evaluated(repo, "kws_f32_v2_head", 2, -1.5, below=True)
    sign_evaluated(repo, "kws_f32_v2_full", 3, 0.0, below=False)
    return repo


def post_rollout(config_path, body: dict) -> tuple[int, dict]:
    """``POST /v1/rollouts`` as the CLI sends it, for the HTTP status the CLI does not show."""
    admin = gateway_config.load(config_path).admin
    token = admin_token.read(admin.token_file).decode("ascii")

    async def send():
        if admin.listen.path is not None:
            connector, url = aiohttp.UnixConnector(path=str(admin.listen.path)), "http://localhost"
        else:
            connector, url = None, f"http://{admin.listen.host}:{admin.listen.port}"
        url += "/v1/rollouts"
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as answer,
        ):
            return answer.status, await answer.json()

    return asyncio.run(send())


def test_a_release_below_its_minimum_is_not_rolled_out(start_gateway, operator, fleet):  # noqa: F811
    gateway = start_gateway()
    import_release(gateway, operator)
    devices = fleet(2)
    wait_inventory(gateway.config_path, 2)

    done = cli(
        gateway.config_path, "rollout", "start", "--model", "kws", "--version", "2",
        "--stages", "100",
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "kws version 2 was signed below its minimum accuracy (0.5" in line, line
    assert "on 200 labelled inputs, minimum 0.9): it is not rolled out" in line
    body = {"model": "kws", "version": 2, "stages": [100]}
    status, answer = post_rollout(gateway.config_path, body)
    assert status == 409 and "below its minimum accuracy" in answer["error"]
    assert cli_json(gateway.config_path, "rollout", "status")["rollouts"] == []
    assert devices.offered() == []

    started = cli_json(
        gateway.config_path, "rollout", "start", "--model", "kws", "--version", "3",
        "--stages", "100",
    )  # fmt: skip
    assert started["devices"] == 2
    wait_for(lambda: all(d.version == 3 for d in devices.devices), 30, "v3 everywhere")
