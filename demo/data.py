"""Fashion-MNIST split the way the seed experiments need it, written as ordinary TFRecord inputs.

The LPIRC 2018 team distilled ImageNet students on ImageNet plus unlabeled Open Images. At small scale:
a labelled part of the Fashion-MNIST training set plays ImageNet, the rest of the training set with its
labels removed plays Open Images, and the 10k test set is the held-out evaluation. Every part is written
as `tfrecord:` input (tf.Example with image/encoded and image/class/label), read through the same image
sources as any user's data.

Every image is zero-padded from 28x28 to 32x32 (the LeNet convention for MNIST). The evaluation view of
the whole project is the centre crop of 87.5% of the shorter side (ImageNet's "resize 256, crop 224",
`distillery.views.eval_view`), and 28 / 32 = 87.5%: after padding, the evaluation view is exactly the
original image, and the random training views (area fraction >= min_scale) are crops around it.

    .venv/bin/python -c "from demo import data; print(data.write_splits('/tmp/fmnist', 10000, 20000, 10000).counts)"
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Iterable

import numpy as np
import tensorflow as tf
from PIL import Image

from pipelines import sources

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")


@dataclasses.dataclass(frozen=True)
class DemoSplits:
    """Paths of the three TFRecord files and how many images each holds."""

    labelled: str
    unlabeled: str
    test: str
    counts: dict


def _example(image_id: str, encoded: bytes, label: int) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


PAD = 2  # 28 + 2 * 2 = 32; 28 / 32 = views.CENTRAL_FRACTION


def pad_png(encoded: bytes, pad: int = PAD) -> bytes:
    """The image zero-padded by `pad` pixels on every side, as PNG (the background of Fashion-MNIST is 0)."""
    with Image.open(io.BytesIO(encoded)) as image:
        pixels = np.asarray(image)
    padding = ((pad, pad), (pad, pad)) + ((0, 0),) * (pixels.ndim - 2)
    buffer = io.BytesIO()
    Image.fromarray(np.pad(pixels, padding)).save(buffer, "PNG")
    return buffer.getvalue()


def _write(path: str, items: Iterable[sources.SourceExample], keep_labels: bool) -> int:
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for item in items:
            if isinstance(item, sources.ReadFailure):
                raise RuntimeError(f"{item.origin}: cannot read {item.image_id}: {item.reason}")
            writer.write(_example(item.image_id, pad_png(item.encoded), item.label if keep_labels else -1))
            count += 1
    return count


def write_splits(output_dir: str, labelled: int, unlabeled: int, test: int,
                 idx_dir: str = FASHION_MNIST_DIR) -> DemoSplits:
    """Writes labelled / unlabeled (labels removed) / test TFRecords from the Fashion-MNIST idx files.

    The labelled part is the first `labelled` training images, the unlabeled part the next `unlabeled`.

    Raises:
      FileNotFoundError: when the idx files are missing (install the Debian package dataset-fashion-mnist).
    """
    if not os.path.isdir(idx_dir):
        raise FileNotFoundError(f"{idx_dir} does not exist: install the Debian package dataset-fashion-mnist "
                                "(`make install` does, as root)")
    if labelled + unlabeled > 60000 or test > 10000:
        raise ValueError("Fashion-MNIST has 60000 training and 10000 test images")
    os.makedirs(output_dir, exist_ok=True)
    train = sources.iterate_source(sources.open_source(f"idx:{idx_dir}:train", max_examples=labelled + unlabeled))
    paths = {name: os.path.join(output_dir, f"{name}.tfrecord") for name in ("labelled", "unlabeled", "test")}
    counts = {"labelled": _write(paths["labelled"], (next(train) for _ in range(labelled)), keep_labels=True)}
    counts["unlabeled"] = _write(paths["unlabeled"], train, keep_labels=False)
    counts["test"] = _write(paths["test"], sources.iterate_source(
        sources.open_source(f"idx:{idx_dir}:test", max_examples=test)), keep_labels=True)
    return DemoSplits(paths["labelled"], paths["unlabeled"], paths["test"], counts)


def read_images(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as ([N, 32, 32, 3] uint8 RGB, [N] labels): for training the teacher."""
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(serialized):
        features = tf.io.parse_single_example(serialized, spec)
        image = tf.io.decode_image(features["image/encoded"], channels=3, expand_animations=False)
        return image, features["image/class/label"]

    images, labels = [], []
    for image_batch, label_batch in tf.data.TFRecordDataset(path).map(parse).batch(4096):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)
