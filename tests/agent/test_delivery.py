"""Telemetry delivery through a real mosquitto: nothing is lost that was not counted as dropped,
across kill -9 of the agent, a broker restart, and an outage longer than the spool can hold."""

from __future__ import annotations

import time

import pytest

from tests.agent.agent_support import (
    AgentProcess,
    Collector,
    FaultyLink,
    SpoolFile,
    agent_config,
    assert_exact_delivery,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def collector(broker):
    collector = Collector(broker.config.port)
    yield collector
    collector.close()


def spool_depth(path) -> int:
    state = SpoolFile.read(path)
    return state.next_seq - state.dropped


def test_kill9_mid_stream_then_restart(tmp_path, broker, collector, models):
    config = write_config(
        tmp_path / "agent.toml", agent_config(tmp_path, broker, models("kws_f32_v1"))
    )
    spool = tmp_path / "state-dev1" / "spool.db"
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: len(collector.data.records) >= 300, 20, "300 records delivered")
    agent.kill()
    killed_at = SpoolFile.read(spool)
    assert killed_at.integrity == "ok"

    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    wait_for(
        lambda: len(collector.seqs("dev1", killed_at.boot)) > killed_at.next_seq + 200,
        20,
        "records after the restart",
    )
    assert agent.terminate() == 0
    state = assert_exact_delivery(collector, spool)
    assert state.boot == killed_at.boot, "an agent restart keeps the boot id"
    assert state.dropped == 0
    assert state.next_seq > killed_at.next_seq


def test_broker_stop_and_restart(tmp_path, broker, collector, models):
    config = write_config(
        tmp_path / "agent.toml", agent_config(tmp_path, broker, models("kws_int8_v1"))
    )
    spool = tmp_path / "state-dev1" / "spool.db"
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: len(collector.data.records) >= 200, 20, "records delivered")

    broker.stop()
    before = spool_depth(spool)
    wait_for(lambda: spool_depth(spool) > before + 300, 20, "records spooled while offline")
    broker.start()
    wait_for(lambda: "mqtt_connect_failed" in agent.log(), 1, "a failed reconnect attempt")
    wait_for(lambda: agent.log().count('"mqtt_connected"') >= 2, 20, "reconnection")
    outage_end = SpoolFile.read(spool).next_seq
    wait_for(
        lambda: outage_end - 1 in collector.seqs("dev1", SpoolFile.read(spool).boot),
        20,
        "the records of the outage",
    )
    assert agent.terminate() == 0
    state = assert_exact_delivery(collector, spool)
    assert state.dropped == 0


def start_fast_agent(tmp_path, broker, collector, models, spool_bytes):
    """An agent inferring at 1 kHz into a small spool, once its first records are delivered."""
    tables = agent_config(
        tmp_path,
        broker,
        models("kws_f32_v1"),
        telemetry={"spool_bytes": spool_bytes, "batch_records": 20},
        inference={"rate_hz": 1000.0},
    )
    agent = AgentProcess(write_config(tmp_path / "agent.toml", tables))
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: len(collector.data.records) >= 100, 20, "records delivered")
    return agent, tmp_path / "state-dev1" / "spool.db"


def test_outage_longer_than_the_spool_counts_drops_exactly(tmp_path, broker, collector, models):
    agent, spool = start_fast_agent(tmp_path, broker, collector, models, spool_bytes=64 * 1024)

    broker.stop()
    wait_for(lambda: SpoolFile.read(spool).dropped > 500, 30, "the spool cap to drop records")
    offline = SpoolFile.read(spool)
    assert offline.bytes <= 64 * 1024 + 128 * 1024, "cap exceeded by more than one batch"
    broker.start()
    wait_for(lambda: agent.log().count('"mqtt_connected"') >= 2, 20, "reconnection")
    time.sleep(1.0)  # let it stream on a little after the outage
    assert agent.terminate() == 0
    state = assert_exact_delivery(collector, spool)
    assert state.dropped >= offline.dropped > 0
    status = wait_for(lambda: collector.status("dev1"), 5, "retained status")
    assert status.state == "offline"


@pytest.fixture
def faulty(broker):
    link = FaultyLink(broker.config.port)
    yield link
    link.close()


# keepalive 5 s: a dead connection is found within 10 s; timeout_s 1 s: an acknowledgement later
# than that must not count as a dead connection.
FAST_DEATH = {"connect_timeout_s": 1.0, "keepalive_s": 5}


def test_publish_lost_in_flight_is_sent_again(tmp_path, broker, faulty, collector, models):
    tables = agent_config(tmp_path, broker, models("kws_f32_v1"), url=faulty.url, mqtt=FAST_DEATH)
    config = write_config(tmp_path / "agent.toml", tables)
    spool = tmp_path / "state-dev1" / "spool.db"
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: len(collector.data.records) >= 200, 20, "records delivered")

    faulty.set_mode("blackhole")  # the next batch goes nowhere and is never acknowledged
    wait_for(lambda: "mqtt_disconnected" in agent.log(), 20, "keepalive to find the dead link")
    faulty.set_mode("pass")
    wait_for(lambda: agent.log().count('"mqtt_connected"') >= 2, 20, "reconnection")
    boot = SpoolFile.read(spool).boot
    target = SpoolFile.read(spool).next_seq
    wait_for(lambda: target - 1 in collector.seqs("dev1", boot), 20, "records after the fault")
    assert agent.terminate() == 0
    state = assert_exact_delivery(collector, spool)
    assert state.dropped == 0


def test_records_possibly_delivered_are_never_dropped(tmp_path, broker, faulty, collector, models):
    tables = agent_config(
        tmp_path,
        broker,
        models("kws_f32_v1"),
        url=faulty.url,
        mqtt=FAST_DEATH,
        telemetry={"spool_bytes": 32 * 1024, "batch_records": 20},
        inference={"rate_hz": 1000.0},
    )
    config = write_config(tmp_path / "agent.toml", tables)
    spool = tmp_path / "state-dev1" / "spool.db"
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: len(collector.data.records) >= 100, 20, "records delivered")

    # The broker gets the next batches but the agent never hears their PUBACK; meanwhile the
    # cap drops records. The batches that may have arrived must be sent again, not dropped.
    delivered_before = collector.data.deliveries
    faulty.set_mode("deaf")
    wait_for(lambda: SpoolFile.read(spool).dropped > 300, 30, "the spool cap to drop records")
    faulty.set_mode("pass")
    wait_for(lambda: agent.log().count('"mqtt_connected"') >= 2, 20, "reconnection")
    assert agent.terminate() == 0
    state = assert_exact_delivery(collector, spool)
    assert state.dropped > 300
    duplicates = collector.data.deliveries - len(collector.data.records)
    assert collector.data.deliveries > delivered_before
    assert duplicates > 0, "the unacknowledged batch reached the broker and was sent again"


def test_late_acknowledgements_keep_the_connection(tmp_path, broker, faulty, collector, models):
    tables = agent_config(tmp_path, broker, models("kws_f32_v1"), url=faulty.url, mqtt=FAST_DEATH)
    spool = tmp_path / "state-dev1" / "spool.db"
    agent = AgentProcess(write_config(tmp_path / "agent.toml", tables))
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: len(collector.data.records) >= 100, 20, "records delivered")

    faulty.set_mode("slow")  # every PUBACK comes 2.5 s late, far past timeout_s
    slow_from = len(collector.data.records)
    time.sleep(3 * faulty.delay + 5)
    log = agent.log()
    assert "mqtt_disconnected" not in log, "a late PUBACK ended a live session"
    assert log.count('"mqtt_connected"') == 1
    assert SpoolFile.read(spool).dropped == 0
    assert len(collector.data.records) > slow_from + 100, "telemetry flowed while acks were late"
    faulty.set_mode("pass")
    assert agent.terminate() == 0
    assert_exact_delivery(collector, spool)


def test_mqtts_with_client_certificate(tmp_path, make_broker, models):
    broker = make_broker(tls=True)
    ca = broker.ca
    gateway = ca.issue("test-collector")
    broker.login("test-collector", site=True)  # the certificate's name is the user name
    collector = Collector(broker.config.port, tls=(ca.ca.cert, gateway.cert, gateway.key))
    device = ca.issue("dev1")
    tables = agent_config(
        tmp_path,
        broker,
        models("kws_int8_v1"),
        url=broker.url.replace("127.0.0.1", "localhost"),
        mqtt={"ca_file": ca.ca.cert, "cert_file": device.cert, "key_file": device.key},
    )
    agent = AgentProcess(write_config(tmp_path / "agent.toml", tables))
    wait_for(lambda: len(collector.data.records) >= 100, 20, "records over TLS")
    assert collector.status("dev1").state == "online"
    assert agent.terminate() == 0
    assert_exact_delivery(collector, tmp_path / "state-dev1" / "spool.db")
    collector.close()


def test_kill9_during_an_outage_that_overflows_the_spool(tmp_path, broker, collector, models):
    agent, spool = start_fast_agent(tmp_path, broker, collector, models, spool_bytes=48 * 1024)
    broker.stop()
    wait_for(lambda: SpoolFile.read(spool).dropped > 200, 30, "drops while offline")
    agent.kill()
    killed = SpoolFile.read(spool)
    assert killed.integrity == "ok"

    agent = AgentProcess(agent.config_path)  # restarts while the broker is still down
    wait_for(lambda: SpoolFile.read(spool).dropped > killed.dropped + 200, 30, "more drops")
    broker.start()
    wait_for(lambda: agent.log().count('"mqtt_connected"') >= 1, 20, "reconnection")
    assert agent.terminate() == 0
    state = assert_exact_delivery(collector, spool)
    assert state.boot == killed.boot and state.dropped > killed.dropped


def test_sigterm_with_drain_sends_the_whole_spool(tmp_path, broker, collector, models):
    """Batches wait for a full minute, so only the drain on stop can send them."""
    tables = agent_config(tmp_path, broker, models("kws_f32_v1"))
    tables["telemetry"].update(batch_records=10_000, batch_age_s=60.0, drain_s=10.0)
    config = write_config(tmp_path / "agent.toml", tables)
    spool = tmp_path / "state-dev1" / "spool.db"
    agent = AgentProcess(config)
    agent.wait_logged("mqtt_connected")
    wait_for(lambda: SpoolFile.read(spool).next_seq >= 300, 20, "300 records spooled")
    assert not collector.data.records, "nothing is due before the stop"
    assert agent.terminate() == 0
    state = SpoolFile.read(spool)
    assert state.left == frozenset() and state.dropped == 0
    assert_exact_delivery(collector, spool)
