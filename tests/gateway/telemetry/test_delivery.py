"""End to end through real processes: devices -> mosquitto -> gateway -> cloud (aiohttp, TLS with
a private CA). The cloud fails in every way it can, the gateway is killed with SIGKILL while
records flow and while the cloud refuses them, the broker restarts; at the end the cloud holds
every record the devices published, byte for byte, and after dedup by record id nothing else."""

from __future__ import annotations

from tests.gateway.support import Cloud, Publisher, wait_for


def _grows(cloud: Cloud, by: int = 300, timeout: float = 30) -> None:
    start = len(cloud.unique())
    wait_for(lambda: len(cloud.unique()) >= start + by, timeout, f"{by} more records in the cloud")


def test_every_record_arrives_once_across_cloud_failures_kills_and_broker_restart(
    broker, tls_cloud, make_gateway
):
    cloud, ca_file = tls_cloud
    cloud.hang_s = 2.0
    gateway = make_gateway(broker, cloud.url, uplink={"ca_file": ca_file, "timeout_s": 1.0})
    devices = [Publisher(broker, f"dev-{i}", batch=25, interval=0.04).start() for i in range(4)]
    _grows(cloud)

    for mode in ("500", "429", "timeout", "reset"):
        cloud.mode = mode
        wait_for(lambda m=mode: cloud.responses[m] >= 3, 20, f"the gateway to meet {mode}")
    cloud.mode = "ok"
    _grows(cloud)

    gateway.kill()  # mid-stream: ingest and uploads in flight
    gateway.start()
    _grows(cloud)

    cloud.mode = "500"  # the spool holds records the cloud has not confirmed
    wait_for(lambda: cloud.responses["500"] >= 6, 20, "refused uploads")
    gateway.kill()
    cloud.mode = "ok"
    gateway.start()
    _grows(cloud)

    broker.restart()
    _grows(cloud)

    for device in devices:
        device.finish()
    published = {}
    for device in devices:
        published |= device.published
    wait_for(lambda: len(cloud.unique()) >= len(published), 60, "every record in the cloud")
    wait_for(lambda: gateway.metric("edgefleet_gateway_spool_records") == 0, 30, "spool empty")

    assert cloud.unique() == set(published)
    assert all(cloud.records[key] == raw for key, raw in published.items())
    assert cloud.violations == []
    assert cloud.received > len(published)  # answers were lost, so batches were sent again
    assert gateway.metric("edgefleet_gateway_spool_dropped_records_total") == 0
    assert gateway.stop() == 0


def test_two_replicas_on_a_shared_subscription_split_the_load(broker, cloud, make_gateway):
    share = {"share_group": "ingest"}
    replicas = [make_gateway(broker, cloud.url, name=n, mqtt=share) for n in ("gw-a", "gw-b")]
    devices = [
        Publisher(broker, f"dev-{i}", batch=20, interval=0.005, limit=2000).start()
        for i in range(4)
    ]
    wait_for(lambda: all(d.done for d in devices), 60, "the devices to publish")
    published = {}
    for device in devices:
        device.finish()
        published |= device.published
    wait_for(lambda: len(cloud.unique()) >= len(published), 60, "every record in the cloud")
    assert cloud.unique() == set(published)

    ingested = [g.metric("edgefleet_gateway_ingest_records_total") for g in replicas]
    assert sum(ingested) == len(published)  # each message went to exactly one replica
    assert min(ingested) >= 0.25 * len(published), ingested
