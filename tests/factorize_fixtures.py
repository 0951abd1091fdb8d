"""Tiny models and soft-label records for the factorize tests (imported by tests/test_factorize_*.py)."""

import io
import os

import keras
import numpy as np
from PIL import Image

from distillery import records, views


def tiny_model(seed: int = 0) -> keras.Model:
    """Preprocessing, a 3x3 stem, two 1x1 convs (one strided, one followed by batch norm) and a dense head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(x)
    x = keras.layers.Conv2D(24, 1, name="pw1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0, name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(32, 1, strides=2, activation="relu", name="pw2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(seed)
    bn = model.get_layer("bn1")  # non-trivial batch-norm statistics, so "the BN stays" is visible
    bn.set_weights([rng.uniform(0.5, 1.5, 24), rng.normal(0, 0.1, 24), rng.normal(0, 0.1, 24), rng.uniform(0.5, 2, 24)])
    for name in ("pw1", "pw2", "logits"):
        layer = model.get_layer(name)
        layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    return model


def images(count: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)


def write_tiny_records(directory, count: int = 24, name: str = "train-00000") -> str:
    """`count` labelled 8x8 records whose soft labels are the unfactorized tiny model's own logits (one
    view, full logits) and whose label is its argmax; returns their glob."""
    teacher = tiny_model()
    rng = np.random.default_rng(5)
    written = []
    for index in range(count):
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        crops, flips = views.sample_views(f"img{index}", 0, 1, 8, 8)
        pixels = views.crop_view(image, crops[0], bool(flips[0]), 8).numpy()
        logits = teacher(pixels[None]).numpy()
        written.append(records.make_record(f"img{index}", int(logits.argmax()), ["tiny"], crops, flips, logits, 10,
                                           encoded_image=buffer.getvalue()))
    records.write_records(os.path.join(str(directory), name), written)
    return os.path.join(str(directory), "train-*")
