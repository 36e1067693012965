"""The ML metadata a release signs about a model, carried in its TUF target's ``custom`` field.

TUF covers these bytes with the targets signature but does not look inside them, so both the
signer and the device parse them through ``ModelMeta.from_json``, which refuses anything
malformed. The health-gate vectors live in a separate target (``<name>/<version>.gate.json``)
whose hash is signed here, so the targets metadata stays small; so does the labelled evaluation
set (``<name>/<version>.eval.npz``), whose accuracy floor the device enforces.

An agent that predates a field ignores it (``from_json`` reads only the keys it knows), so a new
optional entry such as ``evaluation`` keeps format 1 and old agents keep updating.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import re
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol.drift import DriftReference

FORMAT_VERSION = 1
# Versions are whole numbers from 1 to the largest signed 32-bit integer: every store, every
# language and every MCUboot build number along the way can hold them.
MAX_VERSION = 2**31 - 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DTYPES = ("float32", "int8", "uint8", "int16", "int32", "int64", "float16", "bool")
# An evaluation set is run whole by the device's health gate: at most this many samples, and at
# most this many input values in all (64 MiB of float32), whatever the model's input shape.
MAX_EVAL_SAMPLES = 10_000
MAX_EVAL_VALUES = 2**24
MAX_EVAL_BYTES = 64 * 1024 * 1024
NPY_HEADER_BYTES = 4096  # a .npy header of any array here is well under this
LABEL_BYTES = 8  # labels may come in any integer width up to int64


def decimal(value: float) -> str:
    """A float as signed metadata carries it: TUF's canonical JSON has no floats, only strings
    and integers, so floats travel as their shortest round-tripping decimal string."""
    return repr(float(value))


class MetadataError(ValueError):
    """Signed ML metadata or gate vectors that do not follow the schema."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MetadataError(message)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> TensorSpec:
        """From a LiteRT / tflite-runtime interpreter's tensor details."""
        scale, zero_point = details["quantization"]
        return cls(
            name=details["name"],
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]).name,
            scale=float(scale),
            zero_point=int(zero_point),
        )

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Float values -> what this tensor takes (rounded, saturated for integer types)."""
        values = np.asarray(values, dtype=np.float32)
        if not self.quantized:
            return values.astype(self.dtype)
        info = np.iinfo(self.dtype)
        scaled = np.round(values / self.scale) + self.zero_point
        return np.clip(scaled, info.min, info.max).astype(self.dtype)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """What this tensor holds -> float32 values."""
        if not self.quantized:
            return np.asarray(raw, dtype=np.float32)
        return ((np.asarray(raw, dtype=np.float32) - self.zero_point) * self.scale).astype(
            np.float32
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "quantization": {"scale": decimal(self.scale), "zero_point": self.zero_point},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        try:
            quant = data.get("quantization", {})
            spec = cls(
                name=str(data["name"]),
                shape=tuple(int(d) for d in data["shape"]),
                dtype=str(data["dtype"]),
                scale=float(quant.get("scale", 0.0)),
                zero_point=int(quant.get("zero_point", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"bad tensor spec: {exc}") from exc
        _require(spec.dtype in DTYPES, f"unknown dtype {spec.dtype!r}")
        _require(all(d >= 0 for d in spec.shape), f"bad shape {spec.shape}")
        return spec


@dataclass(frozen=True)
class GateRef:
    """Where the health-gate vectors are and how closely the outputs must match them."""

    path: str
    sha256: str
    count: int
    atol: float
    min_top1_agreement: float = 1.0
    # The same vectors in the compact encoding (``protocol.gate_vectors``), which agents that
    # know it fetch instead; ``path`` stays for those that do not.
    compact: CompactGateRef | None = None

    @property
    def fetched(self) -> tuple[str, str]:
        """(path, sha256) of the encoding a device fetches: the compact one when it is signed,
        since the device makes seeded inputs itself."""
        if self.compact is not None:
            return self.compact.path, self.compact.sha256
        return self.path, self.sha256


@dataclass(frozen=True)
class CompactGateRef:
    path: str
    sha256: str


def _whole(value: Any) -> int:
    """A JSON integer (TUF's canonical JSON has no floats; a boolean is no count)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    return value


@dataclass(frozen=True)
class EvalRef:
    """Where the labelled evaluation set is, and the accuracy the model must reach on it.

    ``accuracy`` is what the model reached when it was signed; ``passed`` says whether that was
    at least ``min_accuracy`` (a release signed below it is for experiments: the gateway does
    not roll it out, and the device's gate refuses it)."""

    path: str
    sha256: str
    length: int
    count: int
    min_accuracy: float
    accuracy: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "length": self.length,
            "count": self.count,
            "min_accuracy": decimal(self.min_accuracy),
            "accuracy": decimal(self.accuracy),
            "passed": self.passed,
        }

    @classmethod
    def from_json(cls, data: Any) -> EvalRef:
        _require(isinstance(data, dict), "evaluation is not an object")
        try:
            ref = cls(
                path=str(data["path"]),
                sha256=str(data["sha256"]),
                length=_whole(data["length"]),
                count=_whole(data["count"]),
                min_accuracy=float(data["min_accuracy"]),
                accuracy=float(data["accuracy"]),
                passed=data["passed"] is True,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise MetadataError(f"bad evaluation: {exc!r}") from exc
        _require(re.fullmatch(r"[0-9a-f]{64}", ref.sha256) is not None, "bad evaluation sha256")
        _require(1 <= ref.length <= MAX_EVAL_BYTES, f"evaluation length {ref.length} out of range")
        _require(
            1 <= ref.count <= MAX_EVAL_SAMPLES,
            f"evaluation count must be from 1 to {MAX_EVAL_SAMPLES}, not {ref.count}",
        )
        for name, value in (("min_accuracy", ref.min_accuracy), ("accuracy", ref.accuracy)):
            _require(math.isfinite(value) and 0 <= value <= 1, f"evaluation {name} not in [0, 1]")
        _require(
            ref.passed == (ref.accuracy >= ref.min_accuracy),
            "evaluation passed does not agree with its accuracy and minimum",
        )
        return ref


@dataclass(frozen=True)
class ModelMeta:
    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    gate: GateRef
    latency_budget_ms: float
    drift: DriftReference
    arena_bytes: int | None = None
    hardware_tags: tuple[str, ...] = ()
    measured: dict[str, float] = field(default_factory=dict)
    rollback: bool = False  # the operator signed this version as a permitted downgrade
    evaluation: EvalRef | None = None  # a labelled set and the accuracy floor on it
    # What probation should expect of the comparison with its predecessor: a model retrained
    # for drifted inputs is meant to disagree with the incumbent it replaces (top-class
    # agreement, PSI between their top-class distributions). None: the device's setting.
    probation_min_agreement: float | None = None
    probation_max_psi: float | None = None

    def to_json(self) -> dict[str, Any]:
        gate: dict[str, Any] = {
            "path": self.gate.path,
            "sha256": self.gate.sha256,
            "count": self.gate.count,
            "atol": decimal(self.gate.atol),
            "min_top1_agreement": decimal(self.gate.min_top1_agreement),
        }
        if self.gate.compact is not None:
            gate["compact"] = dataclasses.asdict(self.gate.compact)
        data = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "gate": gate,
            "latency_budget_ms": decimal(self.latency_budget_ms),
            "drift": self.drift.to_json(),
            "hardware": {"arena_bytes": self.arena_bytes, "tags": list(self.hardware_tags)},
            "measured": {k: decimal(v) for k, v in self.measured.items()},
        }
        if self.rollback:
            data["rollback"] = True
        if self.evaluation is not None:
            data["evaluation"] = self.evaluation.to_json()
        probation = {
            key: decimal(value)
            for key, value in (
                ("min_agreement", self.probation_min_agreement),
                ("max_psi", self.probation_max_psi),
            )
            if value is not None
        }
        if probation:
            data["probation"] = probation
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMeta:
        _require(isinstance(data, dict), "model metadata is not an object")
        _require(
            data.get("format") == FORMAT_VERSION,
            f"unsupported model metadata format {data.get('format')!r}",
        )
        try:
            gate = data["gate"]
            hardware = data.get("hardware", {})
            meta = cls(
                name=str(data["name"]),
                version=int(data["version"]),
                inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
                gate=GateRef(
                    path=str(gate["path"]),
                    sha256=str(gate["sha256"]),
                    count=int(gate["count"]),
                    atol=float(gate["atol"]),
                    min_top1_agreement=float(gate.get("min_top1_agreement", 1.0)),
                    compact=(
                        CompactGateRef(str(gate["compact"]["path"]), str(gate["compact"]["sha256"]))
                        if "compact" in gate
                        else None
                    ),
                ),
                latency_budget_ms=float(data["latency_budget_ms"]),
                drift=DriftReference.from_json(data["drift"]),
                arena_bytes=hardware.get("arena_bytes"),
                hardware_tags=tuple(str(t) for t in hardware.get("tags", ())),
                measured={k: float(v) for k, v in data.get("measured", {}).items()},
                rollback=data.get("rollback", False) is True,
                evaluation=(
                    EvalRef.from_json(data["evaluation"]) if "evaluation" in data else None
                ),
                probation_min_agreement=_optional_float(data.get("probation"), "min_agreement"),
                probation_max_psi=_optional_float(data.get("probation"), "max_psi"),
            )
        except MetadataError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise MetadataError(f"bad model metadata: {exc!r}") from exc
        _require(bool(NAME_PATTERN.fullmatch(meta.name)), f"bad model name {meta.name!r}")
        _require(1 <= meta.version <= MAX_VERSION, f"version must be from 1 to {MAX_VERSION}")
        _require(math.isfinite(meta.gate.atol) and meta.gate.atol >= 0, "gate atol must be >= 0")
        _require(0 <= meta.gate.min_top1_agreement <= 1, "gate agreement must be from 0 to 1")
        _require(
            all(NAME_PATTERN.fullmatch(t) for t in meta.hardware_tags),
            "hardware tags must be names ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})",
        )
        _require(bool(meta.inputs and meta.outputs), "model metadata lists no tensors")
        _require(
            math.isfinite(meta.latency_budget_ms) and meta.latency_budget_ms > 0,
            "latency budget must be positive",
        )
        _require(re.fullmatch(r"[0-9a-f]{64}", meta.gate.sha256) is not None, "bad gate sha256")
        if meta.gate.compact is not None:
            _check_compact_gate(meta, meta.gate.compact)
        if meta.evaluation is not None:
            _check_evaluation(meta, meta.evaluation)
        agreement, psi = meta.probation_min_agreement, meta.probation_max_psi
        _require(
            agreement is None or (math.isfinite(agreement) and 0 <= agreement <= 1),
            "probation min_agreement must be from 0 to 1",
        )
        _require(psi is None or (math.isfinite(psi) and psi >= 0), "probation max_psi must be >= 0")
        return meta


def _optional_float(table: Any, key: str) -> float | None:
    """``table[key]`` as a float, None when the table or the key is absent."""
    if table is None:
        return None
    _require(isinstance(table, dict), "probation is not an object")
    return None if table.get(key) is None else float(table[key])


def _check_evaluation(meta: ModelMeta, ref: EvalRef) -> None:
    """The evaluation entry fits its model: its own path, one input and one output tensor
    (what the device's engine runs), and a bounded number of input values."""
    _require(
        ref.path == eval_path(meta.name, meta.version),
        f"evaluation path {ref.path!r} is not {eval_path(meta.name, meta.version)!r}",
    )
    _require(
        len(meta.inputs) == 1 and len(meta.outputs) == 1,
        "an evaluation set needs a model with one input and one output tensor",
    )
    values = ref.count * math.prod(meta.inputs[0].shape)
    _require(
        values <= MAX_EVAL_VALUES,
        f"an evaluation set of {values} input values exceeds {MAX_EVAL_VALUES}",
    )


def _check_compact_gate(meta: ModelMeta, ref: CompactGateRef) -> None:
    want = gate_compact_path(meta.name, meta.version)
    _require(ref.path == want, f"compact gate path {ref.path!r} is not {want!r}")
    _require(re.fullmatch(r"[0-9a-f]{64}", ref.sha256) is not None, "bad compact gate sha256")


def gate_compact_path(name: str, version: int) -> str:
    """The target path of a model version's compact gate vectors."""
    return f"{name}/{version}.gate2.json"


def eval_path(name: str, version: int) -> str:
    """The target path of a model version's evaluation set."""
    return f"{name}/{version}.eval.npz"


def encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode(),
    }


def decode_array(data: dict[str, Any]) -> np.ndarray:
    try:
        dtype = np.dtype(data["dtype"]).newbyteorder("<")
        shape = tuple(int(d) for d in data["shape"])
        raw = base64.b64decode(data["data"], validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    except (KeyError, TypeError, ValueError) as exc:
        raise MetadataError(f"bad array: {exc}") from exc


@dataclass(frozen=True)
class GateVectors:
    """Reference inputs (as fed to the model's input tensors, one batch per tensor) and the
    outputs the signed model gave on them."""

    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "inputs": [encode_array(a) for a in self.inputs],
            "outputs": [encode_array(a) for a in self.outputs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateVectors:
        _require(
            isinstance(data, dict) and data.get("format") == FORMAT_VERSION,
            "unsupported gate vectors format",
        )
        try:
            vectors = cls(
                tuple(decode_array(a) for a in data["inputs"]),
                tuple(decode_array(a) for a in data["outputs"]),
            )
        except KeyError as exc:
            raise MetadataError(f"gate vectors lack {exc}") from exc
        counts = {len(a) for a in vectors.inputs + vectors.outputs}
        _require(len(counts) == 1, "gate vectors have different sample counts")
        return vectors


@dataclass(frozen=True)
class EvalSet:
    """Labelled inputs for the accuracy floor: ``inputs`` ``[n, *input shape]`` as the model's
    input tensor takes them (quantized for an integer model, which also keeps the file small),
    ``labels`` ``[n]`` class indices. Stored as a compressed ``.npz`` of those two arrays."""

    inputs: np.ndarray
    labels: np.ndarray

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, inputs=self.inputs, labels=self.labels)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, meta: ModelMeta) -> EvalSet:
        """The set ``meta.evaluation`` describes, read with every size bounded by the signed
        count and the model's tensors before a byte is inflated."""
        ref = meta.evaluation
        if ref is None:
            raise MetadataError("the model metadata names no evaluation set")
        spec, classes = meta.inputs[0], math.prod(meta.outputs[0].shape[1:])
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = sorted(archive.namelist())
                _require(
                    names == ["inputs.npy", "labels.npy"],
                    f"evaluation set holds {names}, not inputs.npy and labels.npy",
                )
                itemsize = np.dtype(spec.dtype).itemsize
                inputs = _npy(archive, "inputs.npy", (ref.count, *spec.shape), itemsize)
                labels = _npy(archive, "labels.npy", (ref.count,), LABEL_BYTES)
        # zipfile and numpy's .npy header parser (ast, tokenize) raise these on bad bytes
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, SyntaxError,
                tokenize.TokenError) as exc:  # fmt: skip
            if isinstance(exc, MetadataError):
                raise
            raise MetadataError(f"evaluation set unreadable: {exc}") from exc
        _require(
            inputs.dtype == np.dtype(spec.dtype),
            f"evaluation inputs are {inputs.dtype}, the model takes {spec.dtype}",
        )
        _require(np.issubdtype(labels.dtype, np.integer), "evaluation labels are not integers")
        _require(
            bool(((labels >= 0) & (labels < classes)).all()),
            f"evaluation labels outside the model's {classes} classes",
        )
        return cls(inputs, labels.astype(np.int64))


def _npy(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], itemsize: int) -> np.ndarray:
    """One array of the archive; its declared size is checked before it is inflated, and
    zipfile reads no more than it declared."""
    bound = math.prod(shape) * itemsize + NPY_HEADER_BYTES
    info = archive.getinfo(name)
    _require(
        info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) and not info.flag_bits & 1,
        f"evaluation {name} is neither stored nor deflated",
    )
    declared = info.file_size
    _require(declared <= bound, f"evaluation {name} declares {declared} bytes, at most {bound}")
    with archive.open(name) as handle:
        array = np.lib.format.read_array(handle, allow_pickle=False)
    _require(array.shape == shape, f"evaluation {name} has shape {array.shape}, signed {shape}")
    return array
