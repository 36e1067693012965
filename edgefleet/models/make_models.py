"""Regenerate the bundled .tflite models (needs TensorFlow; never a runtime dependency).

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow
    /tmp/tf/bin/python edgefleet/models/make_models.py

The models are small but real: a keyword-spotting style CNN over a 49x10 feature map (4 classes)
in float32 and full-integer int8, each with a version 2 made two ways, as fine-tunes are made in
the field: retraining only the classifier head, and fine-tuning every layer at a small learning
rate. Which bytes change between versions is what makes deltas small or large, so the pairs are
the input of the delta benchmarks. A larger float32 vision CNN gives an invoke time of a few
milliseconds for the inference benchmark. Everything is seeded: the same TensorFlow version makes
the same files (TensorFlow 2.21 made these).

Version 3 (``kws_{f32,int8}_v3_drift``) answers input drift the way a team would: version 1
fine-tuned, every layer at a small learning rate, on original inputs mixed with as many whose
bands are dimmed by shifts drawn from [-1.8, -0.5]. The int8 model is calibrated on the same
original inputs as the others, so its input quantization is version 1's. Its delta from version 1
is 67 kB for float32 (v2_full's: 51 kB) and 16 kB for int8 (7 kB); it is not in ``pairs.json``,
whose pairs are the head-versus-full contrast the delta benchmarks measure. Accuracy with LiteRT on
``bands.make`` inputs (2000 per shift, ``default_rng(i)`` for the i-th shift); the brightest-band
rule of ``bands.truth`` is the ceiling:

    shift   f32_v1  f32_v3_drift  int8_v1  int8_v3_drift  bands.truth
     0.0    1.000   1.000         1.000    1.000          1.000
    -0.5    1.000   1.000         1.000    1.000          1.000
    -1.0    0.954   0.994         0.952    0.995          1.000
    -1.5    0.594   0.830         0.591    0.832          0.936
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

HERE = Path(__file__).resolve().parent
CLASSES = 4
SHAPE = (49, 10)


def band(cls: int) -> tuple[slice, slice]:
    """Rows and columns of class ``cls``'s band (as in ``bands.py``)."""
    return slice(cls * 12, cls * 12 + 10), slice(cls * 2, cls * 2 + 3)


def kws_data(seed: int, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each class lights up its own band of the feature map; ``shift`` moves the bands a little."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(0.0, 1.0, (n, *SHAPE)).astype(np.float32)
    for cls in range(CLASSES):
        rows, cols = band(cls)
        x[y == cls, rows, cols] += 2.0 + shift
    return x, tf.keras.utils.to_categorical(y, CLASSES)


def drifted_data(seed: int, n: int, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` original inputs and ``n`` whose bands each move by their own shift, drawn uniformly
    from ``[low, high)``: what comes home from a fleet where some devices' inputs drifted."""
    x_orig, y_orig = kws_data(seed, n)
    x_drift, y_drift = kws_data(seed + 1, n)
    shifts = np.random.default_rng(seed + 2).uniform(low, high, n).astype(np.float32)
    labels = y_drift.argmax(axis=1)
    for cls in range(CLASSES):
        rows, cols = band(cls)
        x_drift[labels == cls, rows, cols] += shifts[labels == cls, None, None]
    return np.concatenate([x_orig, x_drift]), np.concatenate([y_orig, y_drift])


def kws_model() -> tf.keras.Model:
    inputs = tf.keras.Input(shape=SHAPE, name="features")
    x = tf.keras.layers.Reshape((*SHAPE, 1))(inputs)
    x = tf.keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
    x = tf.keras.layers.MaxPool2D(2)(x)
    x = tf.keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = tf.keras.layers.MaxPool2D(2)(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(128, activation="relu", name="dense1")(x)
    outputs = tf.keras.layers.Dense(CLASSES, activation="softmax", name="head")(x)
    return tf.keras.Model(inputs, outputs, name="kws")


def vision_model() -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(128, 128, 1), name="image")
    x = inputs
    for filters in (16, 32, 64, 64):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = tf.keras.layers.MaxPool2D(2)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(2, activation="softmax", name="head")(x)
    return tf.keras.Model(inputs, outputs, name="vision")


def to_float(model: tf.keras.Model) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def to_int8(model: tf.keras.Model, calibration: np.ndarray) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(100))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def drift_tuned(v1: tf.keras.Model) -> tf.keras.Model:
    """``v1`` fine-tuned, every layer at a small learning rate, on original and dimmed inputs.

    Seeded on its own and made after the others, so none of them depends on it."""
    tf.keras.utils.set_random_seed(11)
    x, y = drifted_data(seed=3, n=3000, low=-1.8, high=-0.5)
    model = tf.keras.models.clone_model(v1)
    model.set_weights(v1.get_weights())
    model.compile(tf.keras.optimizers.Adam(3e-4), "categorical_crossentropy")
    model.fit(x, y, epochs=5, batch_size=64, verbose=0, shuffle=True)
    return model


def vision_data(seed: int, n: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise images where class 1 carries a bright 24-pixel square in the left half and class 0
    in the right half; ``shift`` moves the squares down, as a camera remounted would."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0.0, 0.3, (n, 128, 128, 1)).astype(np.float32)
    for i in range(n):
        row = int(rng.integers(8, 72)) + shift
        col = int(rng.integers(8, 40)) + (0 if y[i] else 64)
        x[i, row : row + 24, col : col + 24] += 1.0
    return x, tf.keras.utils.to_categorical(y, 2)


def vision_int8_models() -> dict[str, bytes]:
    """A full-integer int8 vision model and its two version 2s (head-only and full fine-tune),
    seeded on their own and made after the others, so none of them depends on these."""
    tf.keras.utils.set_random_seed(13)
    x1, y1 = vision_data(seed=21, n=384)
    x2, y2 = vision_data(seed=22, n=384, shift=24)
    v1 = vision_model()
    v1.compile(tf.keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    v1.fit(x1, y1, epochs=2, batch_size=32, verbose=0)
    head = tf.keras.models.clone_model(v1)
    head.set_weights(v1.get_weights())
    for layer in head.layers:
        layer.trainable = layer.name == "head"
    head.compile(tf.keras.optimizers.Adam(1e-2), "categorical_crossentropy")
    head.fit(x2, y2, epochs=1, batch_size=32, verbose=0)
    full = tf.keras.models.clone_model(v1)
    full.set_weights(v1.get_weights())
    full.compile(tf.keras.optimizers.Adam(1e-4), "categorical_crossentropy")
    full.fit(x2, y2, epochs=1, batch_size=32, verbose=0)
    return {
        "vision_int8_v1": to_int8(v1, x1),
        "vision_int8_v2_head": to_int8(head, x1),
        "vision_int8_v2_full": to_int8(full, x1),
    }


def main() -> None:
    tf.keras.utils.set_random_seed(7)
    x1, y1 = kws_data(seed=1, n=2000)
    x2, y2 = kws_data(seed=2, n=2000, shift=0.5)

    v1 = kws_model()
    v1.compile(tf.keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    v1.fit(x1, y1, epochs=3, batch_size=64, verbose=0)

    head = tf.keras.models.clone_model(v1)
    head.set_weights(v1.get_weights())
    for layer in head.layers:
        layer.trainable = layer.name == "head"
    head.compile(tf.keras.optimizers.Adam(1e-2), "categorical_crossentropy")
    head.fit(x2, y2, epochs=2, batch_size=64, verbose=0)

    full = tf.keras.models.clone_model(v1)
    full.set_weights(v1.get_weights())
    full.compile(tf.keras.optimizers.Adam(1e-4), "categorical_crossentropy")
    full.fit(x2, y2, epochs=1, batch_size=64, verbose=0)

    models = {
        "kws_f32_v1": to_float(v1),
        "kws_f32_v2_head": to_float(head),
        "kws_f32_v2_full": to_float(full),
        "kws_int8_v1": to_int8(v1, x1),
        "kws_int8_v2_head": to_int8(head, x1),
        "kws_int8_v2_full": to_int8(full, x1),
        "vision_f32_v1": to_float(vision_model()),
    }
    drift = drift_tuned(v1)
    models["kws_f32_v3_drift"] = to_float(drift)
    models["kws_int8_v3_drift"] = to_int8(drift, x1)
    models.update(vision_int8_models())
    for name, data in models.items():
        (HERE / f"{name}.tflite").write_bytes(data)
        print(f"{name}.tflite {len(data)} bytes")

    pairs = [
        {"name": f"kws_{kind}_{how}", "old": f"kws_{kind}_v1", "new": f"kws_{kind}_v2_{how}"}
        for kind in ("f32", "int8")
        for how in ("head", "full")
    ]
    pairs += [
        {"name": f"vision_int8_{how}", "old": "vision_int8_v1", "new": f"vision_int8_v2_{how}"}
        for how in ("head", "full")
    ]
    (HERE / "pairs.json").write_text(json.dumps(pairs, indent=2) + "\n")


if __name__ == "__main__":
    main()
