"""The banded inputs the bundled ``kws_*`` models were trained on, with numpy alone (the models'
maker needs TensorFlow; devices and the simulator must not).

Each of the 4 classes lights up its own band of the 49x10 feature map: rows ``12c .. 12c+9``,
columns ``2c .. 2c+2`` get ``2.0 + shift`` added to standard normal noise. ``shift`` below 0
dims the bands (the inputs drift away from what the model learnt); ``truth`` tells which class
an input was made from, so captured samples can be labelled.
"""

from __future__ import annotations

import numpy as np

CLASSES = 4
SHAPE = (49, 10)
BRIGHTNESS = 2.0


def band(cls: int) -> tuple[slice, slice]:
    """Rows and columns of class ``cls``'s band."""
    return slice(cls * 12, cls * 12 + 10), slice(cls * 2, cls * 2 + 3)


def make(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` inputs ``[n, 49, 10]`` (float32) and the class each was made from."""
    y = rng.integers(0, CLASSES, n)
    x = rng.standard_normal((n, *SHAPE), dtype=np.float32)
    for cls in range(CLASSES):
        rows, cols = band(cls)
        x[y == cls, rows, cols] += np.float32(BRIGHTNESS + shift)
    return x, y


def truth(inputs: np.ndarray) -> np.ndarray:
    """The class each banded input ``[n, 49, 10]`` was made from: its brightest band (while
    ``2 + shift`` stands clear of the noise; at a shift near -2 the bands vanish)."""
    inputs = np.asarray(inputs, dtype=np.float32).reshape(-1, *SHAPE)
    means = np.stack(
        [inputs[:, rows, cols].mean(axis=(1, 2)) for rows, cols in map(band, range(CLASSES))],
        axis=1,
    )
    return means.argmax(axis=1)
