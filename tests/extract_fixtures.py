"""Shared fakes of the extraction tests: a tiny fake teacher, an in-memory source, small images.

The fake teacher is a fixed linear map of 4x4-pooled pixels (32x32 input, 10 classes), so every stored
logit can be recomputed from the view that `distillery.views.crop_view` gives.
"""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from distillery import images, views
from pipelines import extract_shard, sources

INPUT_SIZE = 32
NUM_CLASSES = 10
_WEIGHTS = np.random.default_rng(7).normal(size=(4 * 4 * 3, NUM_CLASSES)).astype(np.float32)


class FakeTeacher:
    """Teacher interface; logits = (4x4 average-pooled pixels / 255) @ W (+ a per-teacher offset)."""

    def __init__(self, name="fake", offset=0.0):
        self.names = (name,)
        self.input_size = (INPUT_SIZE, INPUT_SIZE)
        self.num_classes = NUM_CLASSES
        self.offset = offset

    def __call__(self, batch):
        pooled = tf.nn.avg_pool2d(tf.cast(batch, tf.float32) / 255.0, INPUT_SIZE // 4, INPUT_SIZE // 4, "VALID")
        return tf.reshape(pooled, [-1, 4 * 4 * 3]) @ tf.constant(_WEIGHTS) + self.offset

    def predict(self, batch, batch_size=32):
        return self(tf.constant(np.asarray(batch, np.float32))).numpy()


LOADS = []


def load_fake_teacher():
    LOADS.append(1)
    return FakeTeacher()


RAISE = "RAISE"  # a str, not bytes: survives pickling to Beam workers and is never image data


class ListSource:
    """An in-memory ImageSource: shards of (image_id, bytes or None, label, origin); None = read failure,
    RAISE = the shard's reader itself fails there (a storage error part-way through a shard)."""

    def __init__(self, items, per_shard=3):
        self.items = list(items)
        self.per_shard = per_shard

    def shards(self):
        return [tuple(self.items[i:i + self.per_shard]) for i in range(0, len(self.items), self.per_shard)]

    def unread_inputs(self, shard, already_read):
        return [(image_id, origin) for image_id, _, _, origin in shard[already_read:]]

    def read_shard(self, shard):
        for image_id, encoded, label, origin in shard:
            if encoded == RAISE:
                raise OSError(f"storage went away at {origin}")
            if encoded is None:
                yield sources.ReadFailure(image_id, origin, "cannot read: FileNotFoundError: gone")
            else:
                yield sources.SourceExample(image_id, encoded, label, origin)


def encode(array, fmt="PNG", mode=None, **kwargs):
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def photo(seed, height=48, width=64):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR))


def good_items(count, start=0):
    return [(f"img{index:03d}", encode(photo(index)), index % NUM_CLASSES, f"/data/img{index:03d}.png")
            for index in range(start, start + count)]


def expected_logits(encoded, image_id, config, teacher=None):
    teacher = teacher or FakeTeacher()
    image = images.decode_rgb(encoded, min_side=extract_shard.decode_min_side(INPUT_SIZE, config.views, config.min_scale))
    crops, flips = views.sample_views(image_id, config.seed, config.views, *image.shape[:2], config.min_scale)
    pixels = np.stack([views.crop_view(tf.constant(image), crop, flip, INPUT_SIZE).numpy()
                       for crop, flip in zip(crops, flips)])
    return crops, flips, teacher.predict(pixels)


def tiny_keras_teacher(path):
    """A small random .keras teacher at the fake teacher's input size, saved to `path`."""
    import keras

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3))
    hidden = keras.layers.Rescaling(1 / 255.0)(inputs)
    hidden = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(NUM_CLASSES)(hidden)
    model = keras.Model(inputs, outputs)
    model.set_weights([np.random.default_rng(index).normal(size=w.shape).astype(np.float32)
                       for index, w in enumerate(model.get_weights())])
    model.save(path)
    return model
