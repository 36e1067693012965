"""The simulator's hostile clients against a real mosquitto with the site's ACL: what poison
publishes is malformed by the protocol's own decoders and gets through the broker (but for the
oversize packet, which costs the sender its connection), and the impersonation check sees an
effect when there is one, so that ``impersonations_refused`` is measured, not assumed."""

from __future__ import annotations

import pytest

from firmware_sim.fleet import impersonation, poison
from protocol.telemetry import decode_batch
from protocol.topics import Event, ProtocolError, Status

PREFIX = "edgefleet/sim"
DECODERS = {"telemetry": decode_batch, "status": Status.decode, "events": Event.decode}


@pytest.mark.parametrize("message", poison.malformed("dev000"), ids=lambda m: m.why)
def test_every_poison_message_is_malformed(message):
    with pytest.raises(ProtocolError):
        DECODERS[message.kind](message.payload)


def test_poison_is_taken_by_the_broker_and_the_oversize_packet_drops_the_sender(broker):
    login = broker.login("dev000")
    result = poison.publish(broker.url, PREFIX, "dev000", login, rounds=2)
    assert result.published == 2 * len(poison.malformed("dev000"))
    assert result.oversize_disconnected


def test_a_device_cannot_pass_for_another_or_for_the_gateway(broker, tmp_path):
    login = broker.login("dev000")
    broker.login("dev001")
    witness = broker.login("witness", site=True)
    for client_id in ("dev001", "gateway"):
        attempts = impersonation.attempt(
            broker.url, PREFIX, "dev000", login, "dev001", client_id, witness, tmp_path / "gw.log"
        )
        assert [a.action for a in attempts] == [
            "publish-telemetry", "publish-status", "subscribe-cmd"
        ]  # fmt: skip
        assert all(a.refused for a in attempts), attempts


def test_the_check_sees_an_impersonation_that_works(broker, tmp_path):
    """A site user may write and read every device's topics: the same attempts then have their
    effect, and the check says so."""
    witness = broker.login("witness", site=True)
    intruder = broker.login("operator", site=True)
    attempts = impersonation.attempt(
        broker.url, PREFIX, "operator", intruder, "dev001", "dev001", witness, tmp_path / "gw.log"
    )
    assert [a.refused for a in attempts] == [False, False, False], attempts


def test_a_lost_gateway_session_is_counted_from_its_log(tmp_path):
    log = tmp_path / "gw.log"
    assert impersonation.gateway_disconnects(log) == 0  # no log yet
    log.write_text('{"event": "mqtt connected"}\n{"event": "mqtt disconnected"}\n')
    assert impersonation.gateway_disconnects(log) == 1
