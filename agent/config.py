"""The agent's TOML configuration, parsed into frozen dataclasses with explicit limits.

Every problem is reported as one ``UserError`` line naming the file and the key, e.g.
``config agent.toml: key mqtt.url: must start with mqtt:// or mqtts://``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.updater.download import DEFAULT_MAX_MODEL_BYTES
from agent.updater.probation import ProbationLimits
from edgefleet import tomlconfig
from protocol.model_meta import MAX_VERSION, ModelMeta
from protocol.telemetry import MAX_BATCH_BYTES, MAX_BATCH_RECORDS
from protocol.topics import (
    DEVICE_ID_PATTERN,
    MAX_HARDWARE_TAGS,
    MAX_MCUS,
    NAME_PATTERN,
    SITE_PATTERN,
    default_prefix,
    prefix_problem,
)

SOURCE_KINDS = ("synthetic", "replay", "serial")
PATTERNS = ("noise", "bands")
ENGINES = ("auto", "litert", "tflite-runtime")


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    prefix: str = ""
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0  # connect, subscribe and the goodbye
    reconnect_base_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class ModelConfig:
    path: Path
    meta_path: Path | None = None
    meta: ModelMeta | None = None  # parsed from meta_path: name, version, drift reference
    name: str | None = None
    version: int = 1
    engine: str = "auto"
    threads: int = 1


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "synthetic"
    seed: int = 0
    drift: float = 0.0
    drift_after: int = 0
    pattern: str = "noise"  # synthetic: "noise" (standard normal) or "bands" (one band per class)
    shift: float = 0.0  # bands: added to every band's brightness
    shift_file: Path | None = None  # bands: re-read for ``shift`` when it changes
    path: Path | None = None
    loop: bool = True
    port: str | None = None
    baud: int = 115200
    max_line_bytes: int = 64 * 1024


@dataclass(frozen=True)
class InferenceConfig:
    rate_hz: float = 10.0
    top_k: int = 3
    raw_every: int = 0
    max_chunk: int = 64


@dataclass(frozen=True)
class TelemetryConfig:
    batch_records: int = 100
    batch_age_s: float = 1.0
    batch_bytes: int = 128 * 1024
    spool_bytes: int = 16 * 1024 * 1024
    status_interval_s: float = 30.0
    # On SIGTERM, inference stops and the link keeps sending for up to this long, so a planned
    # stop hands the spool to the broker instead of leaving it for the next start.
    drain_s: float = 0.0


@dataclass(frozen=True)
class CaptureConfig:
    """What the device owner allows campaigns from the gateway to keep: off unless enabled,
    and within a disk budget and an hourly rate no command can raise."""

    enabled: bool = False
    spool_bytes: int = 8 * 1024 * 1024
    max_per_hour: int = 600
    max_campaigns: int = 4


@dataclass(frozen=True)
class DriftConfig:
    window: int = 500
    psi_alarm: float = 0.25
    bins: int = 10


@dataclass(frozen=True)
class UpdateSettings:
    """Model updates: the TUF root the operator provisioned, and how a trial is judged. The
    updater keeps its metadata and A/B slots under ``state.dir/update``."""

    trusted_root: Path
    worker_timeout_s: float = 900.0
    max_worker_crashes: int = 3
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    allowed_models: tuple[str, ...] = ()  # empty: the name of the model the device runs
    probation: ProbationLimits = field(default_factory=ProbationLimits)


@dataclass(frozen=True)
class McuSettings:
    """An attached MCU (``[[mcu]]``): the MCU image name it tracks and where it is attached."""

    name: str
    port: str  # serial device, pty, or socket://HOST:PORT
    baud: int = 115200
    timeout_s: float = 1.0
    protocol: str = "edgefleet"  # or "smp": mcumgr, as Zephyr with MCUboot speaks it
    compress: bool = True  # deflate the upload when the MCU offers it (edgefleet protocol)


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    site: str
    mqtt: MqttConfig
    state_dir: Path
    model: ModelConfig
    source: SourceConfig
    inference: InferenceConfig
    telemetry: TelemetryConfig
    drift: DriftConfig
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    labels_socket: Path | None = None  # [labels] socket: the application's corrections
    update: UpdateSettings | None = None  # None: update commands are rejected
    hardware_tags: tuple[str, ...] = ()  # reported in status; a rollout skips misfits
    arena_bytes: int | None = None
    mcus: tuple[McuSettings, ...] = ()


def load(path: Path) -> AgentConfig:
    """Read and check ``path``; relative paths in it are relative to its directory."""
    origin = str(path)
    data = tomlconfig.read(path, f"config {origin}")
    return parse(data, origin, path.resolve().parent)


def parse(data: dict, origin: str, base: Path) -> AgentConfig:
    root = tomlconfig.Table(f"config {origin}", "", data, base)
    device = root.table("device")
    device_id = device.value("id", str)
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        device.fail("id", "must match [A-Za-z0-9_-]{1,64}")
    site = device.value("site", str)
    if not SITE_PATTERN.fullmatch(site):
        device.fail("site", "must match [A-Za-z0-9_-]{1,64}")
    hardware_tags = tuple(device.value("hardware_tags", list, []))
    if len(hardware_tags) > MAX_HARDWARE_TAGS or not all(
        isinstance(t, str) and NAME_PATTERN.fullmatch(t) for t in hardware_tags
    ):
        device.fail("hardware_tags", f"must be at most {MAX_HARDWARE_TAGS} names")
    arena_bytes = device.value("arena_bytes", int, None, 0)
    device.done()

    state = root.table("state")
    state_dir = state.path_value("dir", required=True)
    state.done()

    config = AgentConfig(
        device_id=device_id,
        site=site,
        hardware_tags=hardware_tags,
        arena_bytes=arena_bytes,
        mqtt=_mqtt(root.table("mqtt"), site),
        state_dir=state_dir,
        model=_model(root.table("model")),
        source=_source(root.table("source")),
        inference=_inference(root.table("inference")),
        telemetry=_telemetry(root.table("telemetry")),
        drift=_drift(root.table("drift")),
        capture=_capture(root.table("capture")),
        labels_socket=_labels(root.table("labels")),
        update=_update(root.table("update")) if "update" in data else None,
        mcus=_mcus(root.tables("mcu", MAX_MCUS)),
    )
    root.done()
    return config


# The agent's earlier names of [mqtt] keys, now those the gateway uses too.
RENAMED_MQTT_KEYS = {
    "ca": "ca_file",
    "cert": "cert_file",
    "key": "key_file",
    "timeout_s": "connect_timeout_s",
    "backoff_base_s": "reconnect_base_s",
    "backoff_max_s": "reconnect_max_s",
}


def _mqtt(table: tomlconfig.Table, site: str) -> MqttConfig:
    for old, new in RENAMED_MQTT_KEYS.items():
        table.renamed(old, new)
    url = table.value("url", str)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        table.fail("url", "must start with mqtt:// or mqtts://")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        table.fail("url", "has a bad port")
    if not parts.hostname:
        table.fail("url", "has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        table.fail("url", "must be mqtt[s]://[user[:password]@]host[:port]")
    username = table.value("username", str, unquote(parts.username) if parts.username else None)
    password = table.value("password", str, unquote(parts.password) if parts.password else None)
    password_file = table.existing_file("password_file")
    if password_file is not None:
        if password is not None:
            table.fail("password_file", "give password or password_file, not both")
        password = password_file.read_text().strip()
    tls = parts.scheme == "mqtts"
    ca, cert, key = (table.existing_file(k) for k in ("ca_file", "cert_file", "key_file"))
    if not tls and (ca or cert or key):
        table.fail(
            "ca_file" if ca else "cert_file" if cert else "key_file", "needs an mqtts:// url"
        )
    if (cert is None) != (key is None):
        table.fail(
            "cert_file" if cert is None else "key_file", "cert_file and key_file go together"
        )
    prefix = table.value("prefix", str, default_prefix(site))
    if (problem := prefix_problem(prefix)) is not None:
        table.fail("prefix", problem)
    config = MqttConfig(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=username,
        password=password,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        prefix=prefix,
        keepalive_s=table.value("keepalive_s", int, 30, 5, 3600),
        connect_timeout_s=table.value("connect_timeout_s", float, 10.0, 0.5, 300),
        reconnect_base_s=table.value("reconnect_base_s", float, 0.5, 0.01, 60),
        reconnect_max_s=table.value("reconnect_max_s", float, 30.0, 0.1, 3600),
    )
    table.done()
    return config


def _model(table: tomlconfig.Table) -> ModelConfig:
    engine = table.choice("engine", ENGINES, "auto")
    meta_path = table.existing_file("meta")
    meta = None
    if meta_path is not None:
        try:
            meta = ModelMeta.from_json(json.loads(meta_path.read_bytes()))
        except (OSError, ValueError) as exc:  # MetadataError is a ValueError
            table.fail("meta", f"{meta_path}: {exc}")
    config = ModelConfig(
        path=table.path_value("path", required=True),
        meta_path=meta_path,
        meta=meta,
        name=table.value("name", str, None),
        version=table.value("version", int, 1, 1, MAX_VERSION),
        engine=engine,
        threads=table.value("threads", int, 1, 1, 64),
    )
    table.done()
    return config


def _source(table: tomlconfig.Table) -> SourceConfig:
    kind = table.choice("kind", SOURCE_KINDS, "synthetic")
    config = SourceConfig(
        kind=kind,
        seed=table.value("seed", int, 0),
        drift=table.value("drift", float, 0.0, -1e6, 1e6),
        drift_after=table.value("drift_after", int, 0, 0),
        path=table.existing_file("path", required=kind == "replay"),
        loop=table.value("loop", bool, True),
        port=table.value("port", str, ... if kind == "serial" else None),
        baud=table.value("baud", int, 115200, 50, 10_000_000),
        max_line_bytes=table.value("max_line_bytes", int, 64 * 1024, 16, 16 * 1024 * 1024),
        pattern=table.choice("pattern", PATTERNS, "noise"),
        shift=table.value("shift", float, 0.0, -1e6, 1e6),
        shift_file=table.path_value("shift_file"),
    )
    table.done()
    return config


def _inference(table: tomlconfig.Table) -> InferenceConfig:
    config = InferenceConfig(
        rate_hz=table.value("rate_hz", float, 10.0, 0.0, 100_000),
        top_k=table.value("top_k", int, 3, 1, 32),
        raw_every=table.value("raw_every", int, 0, 0),
        max_chunk=table.value("max_chunk", int, 64, 1, 4096),
    )
    table.done()
    return config


def _telemetry(table: tomlconfig.Table) -> TelemetryConfig:
    config = TelemetryConfig(
        batch_records=table.value("batch_records", int, 100, 1, MAX_BATCH_RECORDS),
        batch_age_s=table.value("batch_age_s", float, 1.0, 0.0, 3600),
        batch_bytes=table.value("batch_bytes", int, 128 * 1024, 1024, MAX_BATCH_BYTES),
        spool_bytes=table.value("spool_bytes", int, 16 * 1024 * 1024, 4096, 2**40),
        status_interval_s=table.value("status_interval_s", float, 30.0, 0.1, 86400),
        drain_s=table.value("drain_s", float, 0.0, 0.0, 3600),
    )
    table.done()
    return config


def _capture(table: tomlconfig.Table) -> CaptureConfig:
    config = CaptureConfig(
        enabled=table.value("enabled", bool, False),
        spool_bytes=table.value("spool_bytes", int, 8 * 1024 * 1024, 64 * 1024, 2**40),
        max_per_hour=table.value("max_per_hour", int, 600, 0, 1_000_000),
        max_campaigns=table.value("max_campaigns", int, 4, 1, 64),
    )
    table.done()
    return config


def _labels(table: tomlconfig.Table) -> Path | None:
    """Off unless a socket path is given: applications on the device send labels there."""
    socket = table.path_value("socket")
    if socket is not None and len(str(socket).encode()) > 100:
        table.fail("socket", "a unix socket path must be at most 100 bytes")
    table.done()
    return socket


def _drift(table: tomlconfig.Table) -> DriftConfig:
    config = DriftConfig(
        window=table.value("window", int, 500, 10, 10_000_000),
        psi_alarm=table.value("psi_alarm", float, 0.25, 0.0, 100.0),
        bins=table.value("bins", int, 10, 2, 64),
    )
    table.done()
    return config


def _mcus(tables: list[tomlconfig.Table]) -> tuple[McuSettings, ...]:
    mcus: list[McuSettings] = []
    for table in tables:
        name = table.value("name", str)
        if not NAME_PATTERN.fullmatch(name):
            table.fail("name", "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
        if any(mcu.name == name for mcu in mcus):
            table.fail("name", f"{name!r} is the name of another [[mcu]]")
        port = table.value("port", str)
        if not port:
            table.fail("port", "must not be empty")
        mcus.append(
            McuSettings(
                name=name,
                port=port,
                baud=table.value("baud", int, 115200, 50, 10_000_000),
                timeout_s=table.value("timeout_s", float, 1.0, 0.05, 60.0),
                protocol=_mcu_protocol(table),
                compress=table.value("compress", bool, True),
            )
        )
        table.done()
    return tuple(mcus)


def _mcu_protocol(table: tomlconfig.Table) -> str:
    protocol = table.value("protocol", str, "edgefleet")
    if protocol not in ("edgefleet", "smp"):
        table.fail("protocol", "must be 'edgefleet' or 'smp'")
    return protocol


def _update(table: tomlconfig.Table) -> UpdateSettings:
    root = table.existing_file("trusted_root", required=True)
    try:
        json.loads(root.read_bytes())
    except (OSError, ValueError) as exc:
        table.fail("trusted_root", f"{root}: not a readable JSON root: {exc}")
    config = UpdateSettings(
        trusted_root=root,
        worker_timeout_s=table.value("worker_timeout_s", float, 900.0, 10.0, 86400),
        max_worker_crashes=table.value("max_worker_crashes", int, 3, 1, 100),
        max_model_bytes=table.value("max_model_bytes", int, DEFAULT_MAX_MODEL_BYTES, 1024, 2**31),
        allowed_models=_model_names(table),
        probation=probation_limits(table.table("probation")),
    )
    table.done()
    return config


def _model_names(table: tomlconfig.Table) -> tuple[str, ...]:
    names = table.value("allowed_models", list, None)
    if names is None:
        return ()
    if not names or not all(isinstance(n, str) and NAME_PATTERN.fullmatch(n) for n in names):
        table.fail("allowed_models", "must be a non-empty list of model names")
    return tuple(dict.fromkeys(names))


def probation_limits(table: tomlconfig.Table) -> ProbationLimits:
    """``[update.probation]``; the fleet simulator checks a scenario's ``[fleet.probation]``
    with it too."""
    d = ProbationLimits()
    config = ProbationLimits(
        min_samples=table.value("min_samples", int, d.min_samples, 1, 10_000_000),
        window_s=table.value("window_s", float, d.window_s, 0.0, 30 * 86400),
        shadow_every=table.value("shadow_every", int, d.shadow_every, 1, 1_000_000),
        min_agreement=table.value("min_agreement", float, d.min_agreement, 0.0, 1.0),
        max_psi=table.value("max_psi", float, d.max_psi, 0.0, 100.0),
        max_error_rate=table.value("max_error_rate", float, d.max_error_rate, 0.0, 1.0),
        max_latency_p95_ms=table.value("max_latency_p95_ms", float, d.max_latency_p95_ms, 0.0),
        max_latency_p95_ratio=table.value(
            "max_latency_p95_ratio", float, d.max_latency_p95_ratio, 1.0
        ),
        latency_floor_ms=table.value("latency_floor_ms", float, d.latency_floor_ms, 0.0),
        max_trial_boots=table.value("max_trial_boots", int, d.max_trial_boots, 0, 1000),
    )
    table.done()
    return config
