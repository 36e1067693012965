"""A refusal is a verdict about the update or a problem of the way there. Stale, replayed or
expired metadata, bytes that do not match and an unreachable repository are the way: the
worker leaves the saved state where it was, says why on a ``blocked`` line and exits
EX_TEMPFAIL, and the next run, with a fresh refresh, goes on once the way is clear."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from agent.trust import TRANSIENT_REASONS, TrustedRepository, TrustError
from agent.updater.device import UpdaterDevice
from agent.updater.states import BEFORE_SWITCH, State
from agent.updater.worker import EXIT_TEMPFAIL
from tests.updater.conftest import open_world
from tests.updater.support import assert_consistent, final, worker


@pytest.mark.parametrize(
    ("reason", "transient"),
    [
        ("unreachable", True),
        ("expired", True),
        ("rollback", True),  # a replayed (older) timestamp or snapshot
        ("hash-mismatch", True),
        ("too-long", True),
        ("unknown-target", True),  # metadata that does not list the offer yet: stale
        ("bad-signature", False),
        ("untrusted", False),
        ("bad-metadata", False),
        ("not-provisioned", False),
    ],
)
def test_which_trust_failures_are_the_way_and_which_are_verdicts(reason, transient):
    assert TrustError("x", reason).transient is transient
    assert (reason in TRANSIENT_REASONS) is transient


def blocked_line(result) -> dict:
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return next(line for line in lines if "blocked" in line)


def test_expired_metadata_blocks_the_update_until_it_is_renewed(tmp_path):
    """A repository whose timestamp expired (a gateway down for a week, a device clock ahead):
    the update waits in OFFERED on the old model, and completes after the renewal."""
    with open_world(tmp_path / "world") as world:
        world.repo.refresh_timestamp(timedelta(seconds=1))
        time.sleep(1.5)
        state_dir = world.device(tmp_path)
        offer = ("run", "--repository", world.url, "--target", "kws/2.tflite", "--rollout", "r1")
        result = worker(state_dir, world.root, *offer)
        assert result.returncode == EXIT_TEMPFAIL, result.stderr
        line = blocked_line(result)
        assert (
            line["blocked"].startswith("expired: ") and "check the device clock" in line["blocked"]
        )
        assert line["state"] == State.OFFERED.value and line["target"] == "kws/2.tflite"
        active, state = assert_consistent(state_dir, {world.v1})
        assert active == world.v1 and state in BEFORE_SWITCH

        world.repo.refresh_timestamp()
        resumed = worker(state_dir, world.root, "run")
        assert final(resumed)["state"] == State.TRIAL.value
        assert assert_consistent(state_dir, {world.v1, world.v2})[0] == world.v2


def test_a_replayed_timestamp_blocks_the_update_and_the_genuine_one_lets_it_through(tmp_path):
    """A mirror serving an older timestamp than the device has seen (a replay): blocked, not
    refused; the genuine repository completes it."""
    with open_world(tmp_path / "world") as world:
        state_dir = world.device(tmp_path)
        served = world.repo.metadata_dir / "timestamp.json"
        old = served.read_bytes()
        world.repo.refresh_timestamp()
        TrustedRepository(
            UpdaterDevice(state_dir).layout.tuf, world.url, world.root
        )  # sees the new one
        genuine = served.read_bytes()
        served.write_bytes(old)
        offer = ("run", "--repository", world.url, "--target", "kws/2.tflite")
        result = worker(state_dir, world.root, *offer)
        assert result.returncode == EXIT_TEMPFAIL, result.stderr
        assert blocked_line(result)["blocked"].startswith("rollback: ")
        assert assert_consistent(state_dir, {world.v1})[0] == world.v1

        served.write_bytes(genuine)
        assert final(worker(state_dir, world.root, "run"))["state"] == State.TRIAL.value
