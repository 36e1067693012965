"""The gateway's paho clients (ingest and commands) built one way from ``[mqtt]``: protocol,
credentials, TLS, connect timeout and reconnect backoff."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from gateway.config import MqttConfig

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.cert_file and config.key_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def paho_client(config: MqttConfig, client_id: str, persistent: bool, **options) -> mqtt.Client:
    """``persistent``: an MQTT 3.1.1 session that outlives the connection (``clean_session``
    off); under MQTT 5 the caller sets clean start and the session expiry at connect."""
    v5 = config.protocol == "5"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PROTOCOLS[config.protocol],
        clean_session=None if v5 else not persistent,
        **options,
    )
    client.connect_timeout = config.connect_timeout_s
    client.reconnect_delay_set(1, max(1, int(config.reconnect_max_s)))
    if config.username is not None:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        client.tls_set_context(tls_context(config))
    return client
