"""Telemetry from devices to the cloud: ingest, the uplink spool, the uplink and its sinks."""
