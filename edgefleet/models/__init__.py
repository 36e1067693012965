"""Small real .tflite models bundled with edgefleet, for tests, benchmarks and the demo.

``make_models.py`` beside this file made them; ``pairs.json`` lists the version pairs (a
head-only fine-tune and a full fine-tune of each base model). ``kws_*_v3_drift`` is version 1
retrained on dimmed inputs as well as original ones (``bands.py``), as drift is answered.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent


def model_path(name: str) -> Path:
    """Path of a bundled model, by name without extension (``kws_f32_v1``)."""
    path = MODELS_DIR / f"{name}.tflite"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.tflite")))
        raise FileNotFoundError(f"no bundled model {name!r} (known: {known})")
    return path


def model_pairs() -> list[dict[str, str]]:
    """Version pairs: ``{"name", "old", "new"}`` model names."""
    return json.loads((MODELS_DIR / "pairs.json").read_text())
