"""The served metadata never expires under the devices while the gateway runs, and the offline
roles' expiry shows long before it bites."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from agent.trust import TrustedRepository
from edgefleet.cli import main
from firmware_sim.broker import free_port
from gateway.releases.repository import DELTAS_ROLE, ONLINE_ROLES, Repository
from gateway.serving.release_import import gateway_keys
from gateway.serving.renewal import Expiry, MetadataKeeper, renewal_due
from gateway.serving.server import RepositoryServer
from tests.gateway.rollouts.rollout_support import cli, import_release, operator_repository
from tests.gateway.support import wait_for

MINUTE = timedelta(minutes=1)


def test_renewal_is_due_in_the_second_half_of_the_lifetime():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    day = timedelta(days=1)
    assert not renewal_due(now + day, now, day)
    assert not renewal_due(now + timedelta(hours=13), now, day)
    assert renewal_due(now + timedelta(hours=11), now, day)
    assert renewal_due(now - day, now, day)


def about_to_expire(repo: Repository) -> None:
    """Every online role re-signed to expire within a minute, as after a month with no release."""
    repo.renew_online(ONLINE_ROLES, dict.fromkeys(ONLINE_ROLES, MINUTE))


async def test_the_keeper_renews_a_timestamp_about_to_expire(repo):
    repo.refresh_timestamp(MINUTE)
    version = repo.timestamp.signed.version
    keeper = MetadataKeeper(repo, threading.Lock(), 0.05, {"timestamp": timedelta(days=1)})
    async with keeper:
        for _ in range(100):
            if keeper.renewals:
                break
            await asyncio.sleep(0.05)
    assert keeper.renewals == 1
    assert repo.timestamp.signed.version == version + 1
    assert repo.timestamp.signed.expires > datetime.now(UTC) + timedelta(hours=23)


def test_every_online_role_is_renewed_and_a_device_still_verifies(repo, tmp_path):
    """Snapshot and deltas expire after 30 days: renewing only the timestamp froze the fleet
    a month after the last release."""
    device = TrustedRepository(tmp_path / "tuf", str(repo.dir), repo.metadata_dir / "1.root.json")
    about_to_expire(repo)
    versions = {role: repo.expiries()[role] for role in ONLINE_ROLES}
    keeper = MetadataKeeper(repo, threading.Lock())
    assert set(keeper.check()) == set(ONLINE_ROLES)
    now = datetime.now(UTC)
    for role in ONLINE_ROLES:
        assert repo.expiries()[role] > versions[role]
        assert repo.expiries()[role] - now > timedelta(days=6)
    assert keeper.check() == []  # nothing due twice
    assert device.target("kws/1.tflite").length > 0  # a device refreshes through the chain


async def test_a_device_asking_after_a_clock_jump_is_served_renewed_metadata(repo):
    """The timer may be minutes away; the first device request after the clock passed the next
    renewal triggers it, so no device sees an expired role."""
    now = [datetime.now(UTC)]
    keeper = MetadataKeeper(repo, threading.Lock(), interval=3600, clock=lambda: now[0])
    keeper.check()
    served = repo.timestamp.signed.version
    now[0] += timedelta(days=45)
    async with RepositoryServer(repo.dir, before_timestamp=keeper.refresh_if_due) as server:
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{server.url}/metadata/timestamp.json").read()
        )
    assert json.loads(body)["signed"]["version"] > served
    assert keeper.renewals == 1


def test_offline_expiry_warns_within_14_days():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    expires = dict.fromkeys(("root", "targets", *ONLINE_ROLES), now + timedelta(days=60))
    assert Expiry(expires, now).warnings() == []
    expires["targets"] = now + timedelta(days=10)
    (line,) = Expiry(expires, now).warnings()
    assert "targets metadata expires in 10 days" in line
    assert "edgefleet release renew --role targets" in line
    expires["root"] = now - timedelta(days=1)
    assert "root metadata expires already" in Expiry(expires, now).warnings()[0]


@pytest.mark.parametrize("role", ["targets", "root"])
def test_release_renew_resigns_an_offline_role_devices_accept(repo, tmp_path, capsys, role):
    device = TrustedRepository(tmp_path / "tuf", str(repo.dir), repo.metadata_dir / "1.root.json")
    before = repo.expiries()[role]
    capsys.readouterr()
    args = ["release", "renew", "--repo", str(repo.dir), "--role", role, "--expires", "400d"]
    assert main([*args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    renewed = Repository(repo.dir).expiries()[role]
    assert renewed > before and renewed - datetime.now(UTC) > timedelta(days=399)
    assert answer == {"role": role, "expires": renewed.isoformat()}
    device = TrustedRepository(tmp_path / "tuf2", str(repo.dir), repo.metadata_dir / "1.root.json")
    assert device.target("kws/1.tflite").length > 0


def test_release_renew_refuses_an_online_role(repo, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        main(["release", "renew", "--repo", str(repo.dir), "--role", "snapshot"])
    assert exit_code.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_release_list_shows_each_roles_expiry(repo, capsys):
    capsys.readouterr()
    assert main(["release", "expiry", "--repo", str(repo.dir), "--json"]) == 0
    roles = json.loads(capsys.readouterr().out)["roles"]
    assert set(roles) == {"root", "targets", DELTAS_ROLE, "snapshot", "timestamp"}
    assert 89 * 86400 < roles["targets"]["seconds_left"] <= 90 * 86400
    assert main(["release", "list", "--repo", str(repo.dir)]) == 0
    out = capsys.readouterr().out
    assert "targets" in out and "expires" in out


def test_a_running_gateway_renews_what_it_serves_and_reports_expiry(broker, make_gateway, tmp_path):
    operator = operator_repository(tmp_path / "operator", versions=(1,))
    operator.renew_offline("targets", timedelta(days=5))  # the operator forgot to renew it
    port = free_port()
    gateway = make_gateway(
        broker,
        None,
        repository={
            "dir": tmp_path / "served",
            "keys": operator.keys.online,
            "listen": f"127.0.0.1:{port}",
            "timestamp_check_s": 1,
        },
    )
    import_release(gateway, operator)
    served_dir = tmp_path / "served"
    served = Repository(served_dir, gateway_keys(served_dir, operator.keys.online))
    about_to_expire(served)  # as if a month went by with no release

    def renewed() -> bool:
        served.reload()
        left = served.expiries()["snapshot"] - datetime.now(UTC)
        return left > timedelta(days=6)

    wait_for(renewed, 10, "the gateway to renew its online roles")
    status = json.loads(cli(gateway.config_path, "gateway", "status", "--json").stdout)
    assert status["metadata"]["roles"]["snapshot"]["seconds_left"] > 6 * 86400
    (warning,) = status["metadata"]["warnings"]
    assert "targets metadata expires in 4 days" in warning
    left = gateway.metric("edgefleet_gateway_metadata_expires_seconds{role=targets}")
    assert 4 * 86400 < left < 5 * 86400
    assert "offline_metadata_expiring" in gateway.log()
