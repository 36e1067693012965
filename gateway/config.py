"""The gateway daemon's TOML configuration, parsed into frozen dataclasses with explicit limits.

Every value that comes from the file is type- and range-checked here, and a bad one becomes a
``UserError`` naming the file and the key (``gateway.toml: key uplink.url: ...``), so the daemon
never starts half-configured. Relative paths are relative to the file's directory.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet import tomlconfig
from gateway.telemetry import curation_rules
from gateway.telemetry.curation_rules import CurationConfig
from protocol.telemetry import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_PACKET_BYTES
from protocol.topics import SITE_PATTERN, default_prefix, prefix_problem

KiB, MiB, GiB = 1024, 1024**2, 1024**3
MQTT_MAX_PACKET = 268_435_455  # the largest packet MQTT can frame


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    tls: bool
    client_id: str
    prefix: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: str = "5"  # "5" or "3.1.1" (brokers without MQTT 5: no share_group, no expiry)
    share_group: str | None = None  # telemetry via $share/<group>/... when set
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 500
    max_packet_size: int = MAX_PACKET_BYTES  # MQTT 5 Maximum Packet Size the broker must honour
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class IngestConfig:
    validation: str = "identity"  # "identity" or "full" (see docs/gateway.md)
    max_messages_per_commit: int = 250


@dataclass(frozen=True)
class SpoolConfig:
    max_bytes: int = 1 * GiB


@dataclass(frozen=True)
class DeadLettersConfig:
    max_entries: int = 10_000
    max_bytes: int = 64 * MiB


@dataclass(frozen=True)
class UplinkConfig:
    sink: str  # "http", "dir", "dataset" or "mqtt"
    url: str | None = None
    directory: Path | None = None
    ca_file: Path | None = None
    token_file: Path | None = None
    dataset: str | None = None  # sink "dataset": a directory or a pyarrow filesystem URI
    host: str | None = None  # sink "mqtt": the cloud broker (always TLS)
    port: int = 8883
    topic: str | None = None  # default edgefleet/<site>/telemetry
    client_id: str | None = None  # default edgefleet-gateway-<site>
    cert_file: Path | None = None  # the gateway's client certificate for the cloud broker
    key_file: Path | None = None
    batch_records: int = 10_000
    batch_bytes: int = 4 * MiB
    batch_age_s: float = 1.0
    concurrency: int = 2
    timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    gzip_level: int = 1


@dataclass(frozen=True)
class Listen:
    """A TCP address on loopback (``host``, ``port``) or a unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class AdminConfig:
    listen: Listen
    token_file: Path
    viewer_token_file: Path | None = None  # the console's read-only role
    console_listen: Listen | None = None  # loopback TCP for browsers; None: only on ``listen``


@dataclass(frozen=True)
class RepositoryConfig:
    """The served TUF repository; the gateway holds only its online keys."""

    dir: Path
    keys: Path  # snapshot.key, timestamp.key, deltas.key
    listen: Listen
    public_url: str  # what devices are told in update commands
    import_dir: Path | None = None  # watched: a newer release there is imported
    import_poll_s: float = 10.0
    timestamp_check_s: float = 600.0


@dataclass(frozen=True)
class RolloutsConfig:
    database: Path
    tick_s: float = 2.0
    reoffer_s: float = 60.0  # an offer without a verdict is sent again after this
    send_timeout_s: float = 10.0  # wait for the broker's PUBACK of a command
    # Offers sent per second at most: a stage of thousands reaches the repository as a stream,
    # not as one herd fetching the same metadata and delta at once. 0: no limit.
    offers_per_s: float = 100.0


@dataclass(frozen=True)
class CampaignsConfig:
    tick_s: float = 2.0  # how often new eligible devices are sought and campaigns ended


@dataclass(frozen=True)
class GatewayConfig:
    site: str
    data_dir: Path
    mqtt: MqttConfig
    ingest: IngestConfig
    spool: SpoolConfig
    uplink: UplinkConfig
    dead_letters: DeadLettersConfig
    admin: AdminConfig
    metrics: Listen | None
    repository: RepositoryConfig | None  # rollouts run only with a repository to offer from
    rollouts: RolloutsConfig
    curation: CurationConfig | None = None  # None: every record is forwarded as it came
    campaigns: CampaignsConfig = CampaignsConfig()

    @property
    def database(self) -> Path:
        return self.data_dir / "gateway.db"


def load(path: Path) -> GatewayConfig:
    """Read and check ``path``."""
    origin = str(path)
    data = tomlconfig.read(path, origin)
    return parse(data, origin, path.resolve().parent)


def parse(data: dict, origin: str, base: Path) -> GatewayConfig:
    root = tomlconfig.Table(origin, "", data, base)
    gateway = root.table("gateway")
    site = gateway.value("site", str)
    if not SITE_PATTERN.fullmatch(site):
        gateway.fail("site", "must match [A-Za-z0-9_-]{1,64}")
    data_dir = gateway.path_value("data_dir")
    if data_dir is None:
        gateway.fail("data_dir", "is required")
    gateway.done()
    uplink = _uplink(root.table("uplink"), data_dir)
    config = GatewayConfig(
        site=site,
        data_dir=data_dir,
        mqtt=_mqtt(root.table("mqtt"), site),
        ingest=_ingest(root.table("ingest")),
        spool=_spool(root.table("spool")),
        uplink=uplink,
        dead_letters=_dead_letters(root.table("dead_letters"), uplink),
        admin=_admin(root.table("admin"), data_dir),
        metrics=_metrics(root.table("metrics")),
        repository=_repository(root, "repository"),
        rollouts=_rollouts(root.table("rollouts"), data_dir),
        curation=curation_rules.parse(root.table("curation")),
        campaigns=_campaigns(root.table("campaigns")),
    )
    root.done()
    return config


def _mqtt(table: tomlconfig.Table, site: str) -> MqttConfig:
    url = table.value("url", str, "mqtt://127.0.0.1:1883")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        table.fail("url", "must look like mqtt://host:port or mqtts://host:port")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        table.fail("url", "has a bad port")
    username = table.value("username", str, None)
    # The broker makes the user name the client id; a different one here would only mislead.
    client_id = table.value("client_id", str, username or f"edgefleet-gateway-{site}")
    if not 1 <= len(client_id) <= 128 or not client_id.isascii():
        table.fail("client_id", "must be 1..128 ASCII characters")
    if username is not None and client_id != username:
        table.fail("client_id", "must equal mqtt.username (the broker binds the two)")
    prefix = table.value("prefix", str, default_prefix(site))
    if (problem := prefix_problem(prefix)) is not None:
        table.fail("prefix", problem)
    protocol = table.choice("protocol", ("5", "3.1.1"), "5")
    share_group = table.value("share_group", str, None)
    if share_group is not None and not SITE_PATTERN.fullmatch(share_group):
        table.fail("share_group", "must match [A-Za-z0-9_-]{1,64}")
    if share_group is not None and protocol != "5":
        table.fail("share_group", 'shared subscriptions need protocol = "5"')
    max_packet_size = table.value("max_packet_size", int, None, MAX_PACKET_BYTES, MQTT_MAX_PACKET)
    if max_packet_size is not None and protocol != "5":
        table.fail("max_packet_size", 'MQTT 3.1.1 has no Maximum Packet Size: needs protocol = "5"')
    password = table.value("password", str, None)
    password_file = table.existing_file("password_file")
    if password is not None and password_file is not None:
        table.fail("password_file", "give password or password_file, not both")
    if password_file is not None:
        password = password_file.read_text().strip()
    cert_file, key_file = table.existing_file("cert_file"), table.existing_file("key_file")
    if (cert_file is None) != (key_file is None):
        table.fail("cert_file", "cert_file and key_file go together")
    config = MqttConfig(
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "mqtts",
        client_id=client_id,
        prefix=prefix,
        username=username,
        password=password,
        ca_file=table.existing_file("ca_file"),
        cert_file=cert_file,
        key_file=key_file,
        protocol=protocol,
        share_group=share_group,
        session_expiry_s=table.value("session_expiry_s", int, 7 * 24 * 3600, 60, 2**32 - 2),
        receive_maximum=table.value("receive_maximum", int, 500, 1, 65535),
        max_packet_size=max_packet_size or MAX_PACKET_BYTES,
        keepalive_s=table.value("keepalive_s", int, 30, 5, 3600),
        connect_timeout_s=table.value("connect_timeout_s", float, 10.0, 0.5, 300),
        reconnect_max_s=table.value("reconnect_max_s", float, 30.0, 1, 3600),
    )
    table.done()
    return config


def _ingest(table: tomlconfig.Table) -> IngestConfig:
    config = IngestConfig(
        validation=table.choice("validation", ("identity", "full"), "identity"),
        max_messages_per_commit=table.value("max_messages_per_commit", int, 250, 1, 65535),
    )
    table.done()
    return config


def _spool(table: tomlconfig.Table) -> SpoolConfig:
    config = SpoolConfig(
        max_bytes=table.value("max_bytes", int, 1 * GiB, 4 * MAX_BATCH_BYTES, 1024 * GiB)
    )
    table.done()
    return config


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uplink(table: tomlconfig.Table, data_dir: Path) -> UplinkConfig:
    sink = table.choice("sink", ("http", "dir", "dataset", "mqtt"), "dir")
    url = table.value("url", str, None)
    dataset = _uplink_dataset(table, sink)
    mqtt = _uplink_mqtt(table, sink)
    directory = table.path_value("directory", data_dir / "outbox")
    if sink == "http":
        if url is None:
            table.fail("url", "is required when sink = 'http'")
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            table.fail("url", "must be an https:// URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            table.fail("url", "plain http is allowed only on loopback; use https")
    elif url is not None:
        table.fail("url", "is only for sink = 'http'")
    batch_records = table.value("batch_records", int, 10_000, 1, 1_000_000)
    batch_bytes = table.value("batch_bytes", int, 4 * MiB, 1 * KiB, 256 * MiB)
    if batch_records < MAX_BATCH_RECORDS:
        table.fail("batch_records", f"must be >= {MAX_BATCH_RECORDS} (one device message)")
    if batch_bytes < MAX_BATCH_BYTES:
        table.fail("batch_bytes", f"must be >= {MAX_BATCH_BYTES} (one device message)")
    base = table.value("backoff_base_s", float, 0.5, 0.001, 60)
    config = UplinkConfig(
        sink=sink,
        url=url,
        directory=directory,
        ca_file=table.existing_file("ca_file"),
        token_file=table.existing_file("token_file"),
        batch_records=batch_records,
        batch_bytes=batch_bytes,
        batch_age_s=table.value("batch_age_s", float, 1.0, 0.0, 3600),
        concurrency=table.value("concurrency", int, 2, 1, 16),
        timeout_s=table.value("timeout_s", float, 30.0, 0.1, 600),
        backoff_base_s=base,
        backoff_cap_s=table.value("backoff_cap_s", float, 60.0, base, 3600),
        gzip_level=table.value("gzip_level", int, 1, 1, 9),
        dataset=dataset,
        **mqtt,
    )
    table.done()
    return config


def _campaigns(table: tomlconfig.Table) -> CampaignsConfig:
    config = CampaignsConfig(tick_s=table.value("tick_s", float, 2.0, 0.05, 3600))
    table.done()
    return config


def _uplink_dataset(table: tomlconfig.Table, sink: str) -> str | None:
    """``dataset``: a URI as given (``s3://...``), else a path relative to the file."""
    text = table.value("dataset", str, None)
    if text is None:
        if sink == "dataset":
            table.fail("dataset", "is required when sink = 'dataset'")
        return None
    if sink != "dataset":
        table.fail("dataset", "is only for sink = 'dataset'")
    return text if "://" in text else str(table.path_value("dataset", None))


def _uplink_mqtt(table: tomlconfig.Table, sink: str) -> dict:
    keys = ("host", "port", "topic", "client_id", "cert_file", "key_file")
    if sink != "mqtt":
        for key in keys:
            if table.value(key, object, None) is not None:
                table.fail(key, "is only for sink = 'mqtt'")
        return {}
    host = table.value("host", str, None)
    if not host:
        table.fail("host", "is required when sink = 'mqtt'")
    topic = table.value("topic", str, None)
    if topic is not None and (problem := prefix_problem(topic)) is not None:
        table.fail("topic", problem)
    client_id = table.value("client_id", str, None)
    if client_id is not None and not 0 < len(client_id) <= 128:
        table.fail("client_id", "must be 1..128 characters")
    cert_file, key_file = table.existing_file("cert_file"), table.existing_file("key_file")
    if (cert_file is None) != (key_file is None):
        table.fail(
            "key_file" if key_file is None else "cert_file", "cert_file and key_file go together"
        )
    return {
        "host": host,
        "port": table.value("port", int, 8883, 1, 65535),
        "topic": topic,
        "client_id": client_id,
        "cert_file": cert_file,
        "key_file": key_file,
    }


def _dead_letters(table: tomlconfig.Table, uplink: UplinkConfig) -> DeadLettersConfig:
    max_bytes = table.value("max_bytes", int, 64 * MiB, 1 * MiB, 1024 * GiB)
    if max_bytes < uplink.batch_bytes:
        table.fail("max_bytes", f"must be >= uplink.batch_bytes ({uplink.batch_bytes}): one batch")
    config = DeadLettersConfig(
        max_entries=table.value("max_entries", int, 10_000, 10, 10_000_000), max_bytes=max_bytes
    )
    table.done()
    return config


def _listen(table: tomlconfig.Table, key: str, default: str, loopback: bool) -> Listen | None:
    text = table.value(key, str, default)
    if text is None or text == "":
        return None
    if text.startswith("unix:"):
        path = Path(text[5:])
        return Listen(path=path if path.is_absolute() else table.base / path)
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        table.fail(key, "must be host:port or unix:/path")
    if loopback and not _is_loopback(host):
        table.fail(key, "must be a loopback address or a unix socket")
    return Listen(host=host, port=int(port))


def _admin(table: tomlconfig.Table, data_dir: Path) -> AdminConfig:
    listen = _listen(table, "listen", f"unix:{data_dir / 'admin.sock'}", loopback=True)
    if listen is None:
        table.fail("listen", "must not be empty")
    console = _listen(table, "console_listen", "", loopback=True)
    if console is not None and console.path is not None:
        table.fail("console_listen", "must be a loopback host:port (browsers speak TCP)")
    config = AdminConfig(
        listen,
        table.path_value("token_file", data_dir / "admin.token"),
        table.path_value("viewer_token_file", data_dir / "viewer.token"),
        console,
    )
    table.done()
    return config


def _metrics(table: tomlconfig.Table) -> Listen | None:
    listen = _listen(table, "listen", "127.0.0.1:9108", loopback=False)
    if listen is not None and listen.path is not None:
        table.fail("listen", "must be host:port (Prometheus scrapes over TCP); empty disables")
    table.done()
    return listen


ONLINE_KEY_FILES = ("snapshot.key", "timestamp.key", "deltas.key")


def _repository(root: tomlconfig.Table, key: str) -> RepositoryConfig | None:
    present = key in root.data
    table = root.table(key)
    if not present:
        return None
    served = table.path_value("dir")
    if served is None:
        table.fail("dir", "is required")
    keys = table.path_value("keys")
    if keys is None:
        table.fail("keys", "is required (the folder of the online keys)")
    for name in ONLINE_KEY_FILES:
        if not (keys / name).is_file():
            table.fail("keys", f"no {name} in {keys}")
    listen = _listen(table, "listen", "127.0.0.1:8790", loopback=False)
    if listen is None or listen.path is not None or listen.port == 0:
        table.fail("listen", "must be host:port with a port (devices fetch over HTTP)")
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    public_url = table.value("public_url", str, f"http://{host}:{listen.port}")
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        table.fail("public_url", "must be an http:// or https:// URL")
    config = RepositoryConfig(
        dir=served,
        keys=keys,
        listen=listen,
        public_url=public_url.rstrip("/"),
        import_dir=table.path_value("import_dir"),
        import_poll_s=table.value("import_poll_s", float, 10.0, 0.1, 86400),
        timestamp_check_s=table.value("timestamp_check_s", float, 600.0, 1, 86400),
    )
    table.done()
    return config


def _rollouts(table: tomlconfig.Table, data_dir: Path) -> RolloutsConfig:
    config = RolloutsConfig(
        database=table.path_value("database", data_dir / "rollouts.db"),
        tick_s=table.value("tick_s", float, 2.0, 0.05, 3600),
        reoffer_s=table.value("reoffer_s", float, 60.0, 1, 86400),
        send_timeout_s=table.value("send_timeout_s", float, 10.0, 0.5, 300),
        offers_per_s=table.value("offers_per_s", float, 100.0, 0, 100_000),
    )
    table.done()
    return config
