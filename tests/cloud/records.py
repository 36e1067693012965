"""Records of every kind as a device and a gateway write them, for the dataset's tests."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np

BOOT = "0123abcd" * 2
TS_MS = 1_700_000_000_000  # 2023-11-14 UTC


def line(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def body(*records: dict) -> bytes:
    return b"".join(line(r) + b"\n" for r in records)


def common(kind: str, seq: int, model: str = "kws", version: int = 2, dev: str = "cam-1") -> dict:
    return {
        "dev": dev, "boot": BOOT, "seq": seq, "ts_ms": TS_MS + seq, "kind": kind,
        "model": model, "version": version,
    }  # fmt: skip


def tensor(array: np.ndarray) -> dict:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    packed = base64.b64encode(zlib.compress(raw)).decode()
    return {"dtype": str(array.dtype), "shape": list(array.shape), "zlib": packed}


def sample(seq: int, array: np.ndarray | None = None, campaign: str = "low-conf", **extra) -> dict:
    array = np.arange(12, dtype=np.float32).reshape(3, 4) + seq if array is None else array
    return common("sample", seq, **extra) | {
        "campaign": campaign, "trigger": "low_confidence", "class": seq % 4,
        "confidence": 0.5, "margin": 0.125, "drift": False,
        "scores": np.roll([0.5, 0.375, 0.0625, 0.0625], seq % 4).tolist(),
        "input": tensor(array),
    }  # fmt: skip


def inference(seq: int, **extra) -> dict:
    return common("inference", seq, **extra) | {
        "top": [[seq % 12, 0.75], [(seq + 1) % 12, 0.125]], "lat_us": 800 + seq,
        "in": {"mean": 0.1, "std": 0.5, "min": -1.0, "max": 1.0, "feat": [0.25, 0.5]},
    }  # fmt: skip


def drift(seq: int, **extra) -> dict:
    return common("drift", seq, **extra) | {
        "window": 200, "compared": True, "alarm": False, "max_psi": 0.05,
        "psi_in": [0.01], "psi_out": [0.02, 0.05], "psi_top1": 0.03,
        "hist_in": [[1, 2, 3]], "hist_out": [[4, 5], [6, 7]], "top1": [100, 100],
    }  # fmt: skip


def summary(seq: int, **extra) -> dict:
    stats = {"mean": 0.5, "p50": 0.5, "p90": 0.9, "p99": 0.99}
    return common("summary", seq, **extra) | {
        "stream": "inference", "start_ms": TS_MS, "window_s": 60, "records": 120,
        "classes": {"0": 100, "3": 20}, "confidence": stats, "latency_us": stats,
        "drift": {"windows": 1, "alarms": 0, "max_psi": 0.05},
    }  # fmt: skip


def label(seq: int, target: str, cls: int, ts_ms: int = TS_MS, **extra) -> dict:
    """A correction a device sends: its ``target`` record is of class ``cls``."""
    return common("label", seq, **extra) | {
        "ts_ms": ts_ms, "target": target, "label": cls, "labeller": "device",
    }  # fmt: skip


def record_id(seq: int, dev: str = "cam-1") -> str:
    return f"{dev}:{BOOT}:{seq}"
