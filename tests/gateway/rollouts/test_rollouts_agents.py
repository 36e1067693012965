"""Rollouts to 20 real agent processes on real mosquitto, updating from the gateway's served
repository: a model that fails probation stops at the canary, a good one reaches every device."""

from __future__ import annotations

import json
import shutil

from edgefleet.models import model_path
from firmware_sim.broker import free_port
from firmware_sim.fleet.releases import one_class
from gateway.releases.repository import Repository
from tests.agent.agent_support import AgentProcess, agent_config, write_config
from tests.gateway.rollouts.rollout_support import (
    FAST_PROBATION,
    cli,
    cli_json,
    import_release,
    wait_inventory,
)
from tests.updater.conftest import provision
from tests.updater.support import model, release

AGENTS = 20


def test_twenty_agents_bad_model_stops_at_the_canary_good_model_reaches_all(
    tmp_path, broker, make_gateway
):
    operator = Repository.init(tmp_path / "operator")
    release(operator, model("kws_f32_v1"), 1)
    release(operator, model("kws_f32_v2_head"), 2)
    release(operator, one_class(model("kws_f32_v1")), 3)  # passes the gate, fails probation
    listen = f"127.0.0.1:{free_port()}"
    gateway = make_gateway(
        broker,
        None,
        repository={"dir": tmp_path / "served", "keys": operator.keys.online, "listen": listen},
        rollouts={"tick_s": 0.2},
    )
    config = gateway.config_path
    import_release(gateway, operator)
    root = operator.metadata_dir / "1.root.json"
    provision(tmp_path / "template", f"http://{listen}", root)

    for i in range(AGENTS):
        device = f"ag{i:02d}"
        shutil.copytree(tmp_path / "template", tmp_path / f"state-{device}" / "update")
        tables = agent_config(tmp_path, broker, model_path("kws_f32_v1"), device=device)
        tables["inference"] = {"rate_hz": 25.0}
        tables["update"] = {"trusted_root": root, "probation": FAST_PROBATION}
        AgentProcess(write_config(tmp_path / f"{device}.toml", tables))  # reaped after the test
    wait_inventory(config, AGENTS)

    bad = cli(
        config, "rollout", "start", "--model", "kws", "--version", "3", "--stages", "5,50,100",
        "--soak", "0", "--auto-rollback", "--wait", "--json", timeout=90,
    )  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    paused = json.loads(bad.stdout)
    assert (paused["state"], paused["stage"], paused["failed"]) == ("paused", 0, 1), paused
    offered = [p for p in paused["progress"] if p["state"] != "pending"]
    assert len(offered) == 1 and paused["devices"] == AGENTS
    assert cli(config, "rollout", "abort", paused["id"]).returncode == 0

    good = cli(
        config, "rollout", "start", "--model", "kws", "--version", "2", "--stages", "5,50,100",
        "--soak", "0", "--wait", "--json", timeout=120,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr + gateway.log()[-3000:]
    done = json.loads(good.stdout)
    assert (done["state"], done["committed"], done["failed"]) == ("completed", AGENTS, 0)
    rows = cli_json(config, "gateway", "devices")
    assert sorted(r["model_version"] for r in rows) == [2] * AGENTS
