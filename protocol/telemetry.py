"""Telemetry records and the batch that carries them on ``<prefix>/dev/<id>/telemetry``.

A record's unique id is (device, boot, seq): ``boot`` changes when the device boots, ``seq``
counts records within a boot without gaps, so a receiver deduplicates by id and can tell how many
records it never saw. Each record is a self-contained JSON object (it names its device), so a
gateway can store and forward records without the batch around them; the sender keeps records
already encoded and ``encode_batch`` only splices their bytes.

Batch: ``{"schema": 1, "device": "<id>", "records": [<record>, ...]}``. ``decode_batch`` takes
untrusted bytes and returns validated records or raises ``ProtocolError`` (from
``protocol.topics``), nothing else.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from protocol.topics import (
    DEVICE_ID_PATTERN,
    MAX_INT,
    NAME_PATTERN,
    SCHEMA_VERSION,
    ProtocolError,
    get,
    load_object,
)

MAX_RECORD_BYTES = 192 * 1024
MAX_BATCH_BYTES = 256 * 1024
# The largest MQTT packet of the contract: the biggest batch with room for its topic and header.
# Brokers and the gateway refuse bigger packets before reading them.
MAX_PACKET_BYTES = MAX_BATCH_BYTES + 4 * 1024
MAX_BATCH_RECORDS = 10_000
MAX_TOP_K = 32
MAX_FEATURES = 32
MAX_CLASSES = 1024
MAX_BINS = 64
MAX_RAW_BYTES = 128 * 1024
BOOT_PATTERN = re.compile(r"[0-9a-f]{8,64}")
RAW_ITEMSIZE = {"float32": 4, "int8": 1, "uint8": 1, "int16": 2, "int32": 4}
RAW_DTYPES = tuple(RAW_ITEMSIZE)

_BATCH_HEAD = b'{"schema":%d,"device":"%s","records":['


def _require(condition: bool, message: str, reason: str = "invalid") -> None:
    if not condition:
        raise ProtocolError(message, reason)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any, what: str) -> float:
    """A number as a float; an integer too big for a float is refused before converting it."""
    _require(
        isinstance(value, int | float) and not isinstance(value, bool),
        f"{what} not a number",
        "type",
    )
    if isinstance(value, int):
        _require(-MAX_INT < value < MAX_INT, f"{what} is out of range", "range")
    _require(math.isfinite(value), f"{what} is not finite", "non_finite")
    return float(value)


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(f"{what} is not a list", "type")
    return value


def _floats(value: Any, what: str, limit: int) -> tuple[float, ...]:
    value = _list(value, what)
    _require(len(value) <= limit, f"{what} has more than {limit} items", "size")
    return tuple(_finite(v, what) for v in value)


def _counts(value: Any, what: str, limit: int) -> tuple[int, ...]:
    value = _list(value, what)
    _require(len(value) <= limit, f"{what} has more than {limit} items", "size")
    _require(all(_is_int(v) for v in value), f"{what} holds a count that is not an integer", "type")
    _require(all(0 <= v < MAX_INT for v in value), f"{what} holds a count out of range", "range")
    return tuple(value)


@dataclass(frozen=True)
class RecordId:
    device: str
    boot: str
    seq: int

    @property
    def key(self) -> str:
        return f"{self.device}:{self.boot}:{self.seq}"


@dataclass(frozen=True)
class InputSummary:
    """What the model saw, in a few numbers: overall statistics and per-feature means
    (``protocol.drift.feature_summary``) of the dequantized input."""

    mean: float
    std: float
    min: float
    max: float
    features: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": round(float(self.mean), 6),
            "std": round(float(self.std), 6),
            "min": round(float(self.min), 6),
            "max": round(float(self.max), 6),
            "feat": [round(float(f), 5) for f in self.features],
        }

    @classmethod
    def from_json(cls, data: Any) -> InputSummary:
        _require(isinstance(data, dict), "input summary is not an object", "type")
        mean, std, lo, hi = (
            _finite(data.get(k), f"input {k}") for k in ("mean", "std", "min", "max")
        )
        return cls(mean, std, lo, hi, _floats(data.get("feat"), "input features", MAX_FEATURES))


@dataclass(frozen=True)
class RawInput:
    """The input tensor as fed to the model (little-endian), sent only for sampled records."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "b64": base64.b64encode(self.data).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> RawInput:
        _require(isinstance(data, dict), "raw input is not an object", "type")
        dtype = get(data, "dtype", str)
        _require(dtype in RAW_DTYPES, f"unknown raw dtype {dtype!r}")
        shape = data.get("shape")
        _require(isinstance(shape, list) and 0 < len(shape) <= 8, "bad raw shape")
        _require(
            all(_is_int(d) and 0 < d <= MAX_RAW_BYTES for d in shape),
            "bad raw shape",
        )
        text = data.get("b64")
        _require(isinstance(text, str), "raw data is not a string", "type")
        _require(len(text) <= MAX_RAW_BYTES * 4 // 3 + 4, "raw data is too long", "size")
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise ProtocolError("raw input is not base64", "encoding") from None
        size = math.prod(shape) * RAW_ITEMSIZE[dtype]
        _require(len(raw) == size, "raw input size does not match shape")
        return cls(dtype, tuple(shape), raw)


@dataclass(frozen=True)
class Inference:
    """One model invocation: top-k ``(class, score)`` pairs, best first."""

    model: str
    version: int
    top: tuple[tuple[int, float], ...]
    latency_us: int
    summary: InputSummary
    raw: RawInput | None = None

    kind = "inference"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "top": [[int(c), round(float(s), 6)] for c, s in self.top],
            "lat_us": self.latency_us,
            "in": self.summary.to_json(),
        }
        if self.raw is not None:
            data["raw"] = self.raw.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inference:
        top = _list(data.get("top"), "top-k")
        _require(0 < len(top) <= MAX_TOP_K, f"top-k needs 1..{MAX_TOP_K} entries", "size")
        pairs = []
        for item in top:
            _require(isinstance(item, list) and len(item) == 2, "bad top-k entry", "type")
            cls_index = item[0]
            _require(
                isinstance(cls_index, int)
                and not isinstance(cls_index, bool)
                and 0 <= cls_index < MAX_CLASSES,
                "bad class index",
            )
            pairs.append((cls_index, _finite(item[1], "score")))
        raw = data.get("raw")
        return cls(
            model=_model_name(data),
            version=_version(data),
            top=tuple(pairs),
            latency_us=_non_negative_int(data, "lat_us"),
            summary=InputSummary.from_json(data.get("in")),
            raw=RawInput.from_json(raw) if raw is not None else None,
        )


@dataclass(frozen=True)
class DriftWindow:
    """Drift over one window of inferences: live histogram counts (bins as in the release's
    reference) and, when a reference was available, the PSI of each feature and class."""

    model: str
    version: int
    window: int
    compared: bool
    alarm: bool
    max_psi: float
    inputs_psi: tuple[float, ...]
    outputs_psi: tuple[float, ...]
    top1_psi: float
    inputs: tuple[tuple[int, ...], ...]
    outputs: tuple[tuple[int, ...], ...]
    top1: tuple[int, ...]

    kind = "drift"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "window": self.window,
            "compared": self.compared,
            "alarm": self.alarm,
            "max_psi": round(self.max_psi, 6),
            "psi_in": [round(p, 6) for p in self.inputs_psi],
            "psi_out": [round(p, 6) for p in self.outputs_psi],
            "psi_top1": round(self.top1_psi, 6),
            "hist_in": [list(c) for c in self.inputs],
            "hist_out": [list(c) for c in self.outputs],
            "top1": list(self.top1),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriftWindow:
        def hists(key: str, limit: int) -> tuple[tuple[int, ...], ...]:
            value = _list(data.get(key), key)
            _require(len(value) <= limit, f"{key} has more than {limit} histograms", "size")
            return tuple(_counts(h, key, MAX_BINS) for h in value)

        compared, alarm = data.get("compared"), data.get("alarm")
        if not (isinstance(compared, bool) and isinstance(alarm, bool)):
            raise ProtocolError("bad drift flags", "type")
        return cls(
            model=_model_name(data),
            version=_version(data),
            window=_non_negative_int(data, "window"),
            compared=compared,
            alarm=alarm,
            max_psi=_finite(data.get("max_psi"), "max_psi"),
            inputs_psi=_floats(data.get("psi_in"), "psi_in", MAX_FEATURES),
            outputs_psi=_floats(data.get("psi_out"), "psi_out", MAX_CLASSES),
            top1_psi=_finite(data.get("psi_top1"), "psi_top1"),
            inputs=hists("hist_in", MAX_FEATURES),
            outputs=hists("hist_out", MAX_CLASSES),
            top1=_counts(data.get("top1"), "top1", MAX_CLASSES),
        )


@dataclass(frozen=True)
class Tensor:
    """An input tensor as the model took it (little-endian), zlib-compressed on the wire. The
    decompressed size is fixed by dtype and shape and checked while inflating, so a small
    payload cannot expand into a large one."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def to_json(self) -> dict[str, Any]:
        packed = base64.b64encode(zlib.compress(self.data, 6)).decode()
        return {"dtype": self.dtype, "shape": list(self.shape), "zlib": packed}

    @classmethod
    def from_json(cls, data: Any) -> Tensor:
        _require(isinstance(data, dict), "input tensor is not an object", "type")
        dtype = get(data, "dtype", str)
        _require(dtype in RAW_DTYPES, f"unknown input dtype {dtype[:20]!r}")
        shape = data.get("shape")
        _require(isinstance(shape, list) and 0 < len(shape) <= 8, "bad input shape")
        _require(all(_is_int(d) and 0 < d <= MAX_RAW_BYTES for d in shape), "bad input shape")
        size = math.prod(shape) * RAW_ITEMSIZE[dtype]
        _require(size <= MAX_RAW_BYTES, f"input of {size} bytes is too big", "size")
        text = data.get("zlib")
        _require(isinstance(text, str), "input data is not a string", "type")
        _require(len(text) <= MAX_RECORD_BYTES, "input data is too long", "size")
        try:
            packed = base64.b64decode(text, validate=True)
            inflate = zlib.decompressobj()
            raw = inflate.decompress(packed, size + 1)
        except (ValueError, zlib.error):
            raise ProtocolError("input is not base64 zlib data", "encoding") from None
        _require(len(raw) == size and inflate.eof, "input size does not match its shape")
        return cls(dtype, tuple(shape), raw)


@dataclass(frozen=True)
class Sample:
    """An input a campaign's trigger selected: the tensor, the model's whole output, and why it
    was kept. Samples travel on their own topic (``samples``), after telemetry."""

    model: str
    version: int
    campaign: str
    trigger: str
    scores: tuple[float, ...]
    drift: bool
    input: Tensor

    kind = "sample"

    @property
    def top(self) -> tuple[int, float, float]:
        """``(class, confidence, margin)`` from the scores."""
        order = sorted(range(len(self.scores)), key=lambda i: -self.scores[i])
        best = self.scores[order[0]]
        second = self.scores[order[1]] if len(order) > 1 else 0.0
        return order[0], best, best - second

    def to_json(self) -> dict[str, Any]:
        cls_index, confidence, margin = self.top
        return {
            "model": self.model,
            "version": self.version,
            "campaign": self.campaign,
            "trigger": self.trigger,
            "class": cls_index,
            "confidence": round(confidence, 6),
            "margin": round(margin, 6),
            "drift": self.drift,
            "scores": [round(float(s), 6) for s in self.scores],
            "input": self.input.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        campaign, trigger = get(data, "campaign", str), get(data, "trigger", str)
        _require(NAME_PATTERN.fullmatch(campaign) is not None, "bad sample campaign")
        _require(len(trigger) <= 512, "sample trigger is too long", "size")
        drift = get(data, "drift", bool)
        scores = _floats(data.get("scores"), "scores", MAX_CLASSES)
        _require(len(scores) > 0, "sample has no scores")
        return cls(
            model=_model_name(data),
            version=_version(data),
            campaign=campaign,
            trigger=trigger,
            scores=scores,
            drift=drift,
            input=Tensor.from_json(data.get("input")),
        )


TARGET_PATTERN = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9a-f]{8,64}):([0-9]{1,19})")


@dataclass(frozen=True)
class Label:
    """The true class of an earlier record or sample of this device (``target`` is its id,
    ``dev:boot:seq``), as a person or an application on the device said; ``model`` and
    ``version`` are what the device ran when it was told."""

    model: str
    version: int
    target: str
    label: int
    labeller: str = "device"

    kind = "label"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "target": self.target,
            "label": self.label,
            "labeller": self.labeller,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Label:
        target, labeller = get(data, "target", str), get(data, "labeller", str)
        _require(TARGET_PATTERN.fullmatch(target) is not None, "label target is not dev:boot:seq")
        _require(NAME_PATTERN.fullmatch(labeller) is not None, "bad labeller name")
        label = get(data, "label", int)
        _require(0 <= label < MAX_CLASSES, f"label must be a class index below {MAX_CLASSES}")
        return cls(_model_name(data), _version(data), target, label, labeller)


Body = Inference | DriftWindow | Sample | Label
BODIES: dict[str, type[Body]] = {
    Inference.kind: Inference,
    DriftWindow.kind: DriftWindow,
    Sample.kind: Sample,
    Label.kind: Label,
}
# What each device topic may carry.
TOPIC_BODIES = {
    "telemetry": (Inference.kind, DriftWindow.kind, Label.kind),
    "samples": (Sample.kind,),
}


@dataclass(frozen=True)
class Record:
    id: RecordId
    ts_ms: int
    body: Body

    def encode(self) -> bytes:
        """The record as one compact JSON object (what the spool stores and batches splice)."""
        data = {
            "dev": self.id.device,
            "boot": self.id.boot,
            "seq": self.id.seq,
            "ts_ms": self.ts_ms,
            "kind": self.body.kind,
        }
        data |= self.body.to_json()
        raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        _require(len(raw) <= MAX_RECORD_BYTES, f"record of {len(raw)} bytes is too big")
        return raw

    @classmethod
    def from_json(cls, data: Any) -> Record:
        _require(isinstance(data, dict), "record is not an object", "type")
        device, boot = data.get("dev"), data.get("boot")
        _require(
            isinstance(device, str) and DEVICE_ID_PATTERN.fullmatch(device) is not None,
            "bad record device",
        )
        _require(
            isinstance(boot, str) and BOOT_PATTERN.fullmatch(boot) is not None, "bad record boot id"
        )
        kind = data.get("kind")
        _require(isinstance(kind, str), "record kind is not a string", "type")
        _require(kind in BODIES, f"unknown record kind {kind!r:.40}")
        return cls(
            RecordId(device, boot, _non_negative_int(data, "seq")),
            _non_negative_int(data, "ts_ms"),
            BODIES[kind].from_json(data),
        )


@dataclass(frozen=True)
class Batch:
    device: str
    records: tuple[Record, ...]


def _model_name(data: dict[str, Any]) -> str:
    name = data.get("model")
    if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None):
        raise ProtocolError("bad model name")
    return name


def _version(data: dict[str, Any]) -> int:
    version = _non_negative_int(data, "version")
    _require(version >= 1, "model version must be >= 1")
    return version


def _non_negative_int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"field {key!r} is not an integer", "type")
    _require(0 <= value < MAX_INT, f"field {key!r} is out of range", "range")
    return value


def encode_inferences(
    device: str,
    boot: str,
    first_seq: int,
    model: str,
    version: int,
    ts_ms: Sequence[int],
    top: Sequence[Sequence[tuple[int, float]]],
    latency_us: Sequence[int],
    summaries: Sequence[Sequence[float]],
    features: Sequence[Sequence[float]],
    raws: Sequence[RawInput | None],
) -> list[bytes]:
    """Many inference records at once, numbered from ``first_seq``: the same bytes as
    ``Record(...).encode()`` for each, without building the objects (the device's hot path).
    ``summaries`` rows are (mean, std, min, max); every number must be finite."""
    _require(DEVICE_ID_PATTERN.fullmatch(device) is not None, f"bad device id {device!r}")
    _require(BOOT_PATTERN.fullmatch(boot) is not None, f"bad boot id {boot!r}")
    _require(NAME_PATTERN.fullmatch(model) is not None and version >= 1, "bad model identity")
    head = f'{{"dev":"{device}","boot":"{boot}","seq":'
    kind = f',"kind":"inference","model":"{model}","version":{version},"top":['
    out = []
    for i, seq in enumerate(range(first_seq, first_seq + len(ts_ms))):
        mean, std, lo, hi = (_number(v, 6) for v in summaries[i])
        pairs = ",".join(f"[{int(c)},{_number(v, 6)}]" for c, v in top[i])
        feat = ",".join(_number(v, 5) for v in features[i])
        raw = raws[i]
        tail = "}"
        if raw is not None:
            tail = (
                f',"raw":{{"dtype":"{raw.dtype}","shape":[{",".join(map(str, raw.shape))}],'
                f'"b64":"{base64.b64encode(raw.data).decode()}"}}}}'
            )
        text = (
            f'{head}{seq},"ts_ms":{ts_ms[i]}{kind}{pairs}],"lat_us":{latency_us[i]},'
            f'"in":{{"mean":{mean},"std":{std},"min":{lo},"max":{hi},"feat":[{feat}]}}{tail}'
        )
        raw_bytes = text.encode()
        _require(len(raw_bytes) <= MAX_RECORD_BYTES, f"record of {len(raw_bytes)} bytes is too big")
        out.append(raw_bytes)
    return out


def _number(value: float, digits: int) -> str:
    """What ``json.dumps`` writes for ``round(float(value), digits)``; refuses non-finite."""
    value = round(float(value), digits)
    _require(math.isfinite(value), "non-finite number in record")
    return float.__repr__(value)


def batch_head(device: str) -> bytes:
    """What ``encode_batch`` writes before the first record."""
    return _BATCH_HEAD % (SCHEMA_VERSION, device.encode())


def batch_overhead(device: str) -> int:
    """Bytes a batch adds around its records, less one comma per record after the first."""
    return len(batch_head(device)) + 2


def encode_batch(device: str, records: Sequence[bytes]) -> bytes:
    """Splice already-encoded records (``Record.encode``) into one batch message."""
    _require(DEVICE_ID_PATTERN.fullmatch(device) is not None, f"bad device id {device!r}")
    _require(0 < len(records) <= MAX_BATCH_RECORDS, "a batch holds 1..MAX_BATCH_RECORDS records")
    payload = b"".join((batch_head(device), b",".join(records), b"]}"))
    _require(len(payload) <= MAX_BATCH_BYTES, f"batch of {len(payload)} bytes is too big")
    return payload


def decode_batch(payload: bytes) -> Batch:
    """Untrusted bytes -> a validated batch whose records all belong to its device."""
    data = load_object(payload, MAX_BATCH_BYTES, "telemetry")
    device = data.get("device")
    if not (isinstance(device, str) and DEVICE_ID_PATTERN.fullmatch(device) is not None):
        raise ProtocolError("bad batch device")
    items = data.get("records")
    if not (isinstance(items, list) and 0 < len(items) <= MAX_BATCH_RECORDS):
        raise ProtocolError("bad record list")
    records = tuple(Record.from_json(item) for item in items)
    _require(all(r.id.device == device for r in records), "record of another device in batch")
    return Batch(device, records)
