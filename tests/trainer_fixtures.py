"""Tiny teachers and soft-label records for the trainer tests (imported by tests/test_trainer_*.py).

Records are written the way extraction writes them: views from distillery.views.sample_views, the view
pixels from distillery.numpy_views.crop_views on the decoded stored image, the teacher called directly on
those pixels, and distillery.records.make_record / write_records.
"""

from __future__ import annotations

import io
import os
import socket

import keras
import numpy as np
from PIL import Image

from distillery import images as images_module
from distillery import numpy_views, records, views

NUM_CLASSES = 5
TEACHER_SIZE = 24


def moved_alike(start: np.ndarray, expected: np.ndarray, actual: np.ndarray) -> bool:
    """Whether `actual` moved from `start` as `expected` did, to 5e-3 of the array's largest change (+1e-5):
    the tolerance of comparing one step computed two ways (XLA or not, one device or an all-reduce over
    two). At 32 px with 4-image batch norms the gradients are in the hundreds; the two ways agreed to at
    most 2e-3 of each array's largest change (tests/test_trainer_recipe.py, test_trainer_distributed.py)."""
    change = np.abs(expected - start).max()
    return bool(np.allclose(actual - start, expected - start, rtol=0, atol=5e-3 * change + 1e-5))


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (for TF_CONFIG clusters of local processes)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def tiny_teacher_model(num_classes: int = NUM_CLASSES, input_size: int = TEACHER_SIZE, seed: int = 7) -> keras.Model:
    """A small random CNN teacher on raw pixels (its outputs vary with the image, enough for tests)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    return keras.Model(inputs, outputs, name="tiny_teacher")


def make_image(index: int, height: int = 40, width: int = 48) -> np.ndarray:
    """A deterministic uint8 RGB image with class-like structure (coloured gradients + noise)."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (height + width) * 255], -1)
    image = base * rng.uniform(0.2, 1.0, 3) + rng.normal(0, 30, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def write_tiny_records(directory: str, teacher_model: keras.Model, num_files: int = 2, per_file: int = 8,
                       num_views: int = 2, top_k: int | None = None, unlabeled_every: int = 0,
                       prefix: str = "train", first_index: int = 0) -> str:
    """Writes `num_files` record files; returns their glob. top_k None = full logits."""
    num_classes = int(teacher_model.outputs[0].shape[-1])
    size = int(teacher_model.inputs[0].shape[1])
    top_k = top_k or num_classes
    os.makedirs(directory, exist_ok=True)
    index = first_index
    for file_index in range(num_files):
        batch = []
        for _ in range(per_file):
            encoded = png_bytes(make_image(index))
            image = images_module.decode_rgb(encoded)  # what the trainer's tf.io.decode_image sees
            image_id = f"img{index:05d}"
            crops, flips = views.sample_views(image_id, 0, num_views, image.shape[0], image.shape[1])
            pixels = numpy_views.crop_views(image, crops, flips, size)
            full_logits = np.asarray(teacher_model(pixels, training=False))
            label = -1 if unlabeled_every and index % unlabeled_every == 0 else index % num_classes
            batch.append(records.make_record(image_id, label, ["tiny_teacher"], crops, flips, full_logits, top_k,
                                             encoded_image=encoded))
            index += 1
        records.write_records(os.path.join(directory, f"{prefix}-{file_index:05d}-of-{num_files:05d}"), batch)
    return os.path.join(directory, f"{prefix}-*")
