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
import os
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from pipelines import source_records, sources

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


def pad_images(pixels: np.ndarray, pad: int = PAD) -> np.ndarray:
    """[N, H, W] images zero-padded by `pad` pixels on every side (the background of Fashion-MNIST is 0)."""
    return np.pad(pixels, ((0, 0), (pad, pad), (pad, pad)))


def _write(path: str, image_ids: Iterable[str], pixels: np.ndarray, labels: Iterable[int]) -> int:
    """Writes one tf.Example per image (its pixels PNG-encoded) to `path`; returns how many."""
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for image_id, image, label in zip(image_ids, pixels, labels, strict=True):
            writer.write(_example(image_id, source_records.encode_png(image), int(label)))
            count += 1
    return count


def _require_idx_dir(idx_dir: str) -> None:
    """Raises FileNotFoundError, with the install hint, when the Fashion-MNIST idx files are missing."""
    if not os.path.isdir(idx_dir):
        raise FileNotFoundError(f"{idx_dir} does not exist: install the Debian package dataset-fashion-mnist "
                                "(`make install` does, as root)")


def _idx_split(idx_dir: str, split: str, max_examples: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, padded pixels and labels of the first `max_examples` images of an idx split, read through the
    `idx:` image source (which validates the files) and PNG-encoded once, after padding, by `_write`."""
    source = sources.open_source(f"idx:{idx_dir}:{split}", max_examples=max_examples)
    if not isinstance(source, source_records.IdxSource):
        raise TypeError(f"idx:{idx_dir}:{split} opened as {type(source).__name__}, not an idx source")
    images, labels = source.arrays()
    return [source.image_id(index) for index in range(len(images))], pad_images(images), labels


def write_splits(output_dir: str, labelled: int, unlabeled: int, test: int,
                 idx_dir: str = FASHION_MNIST_DIR) -> DemoSplits:
    """Writes labelled / unlabeled (labels removed: -1) / test TFRecords from the Fashion-MNIST idx files.

    The labelled part is the first `labelled` training images, the unlabeled part the next `unlabeled`.
    About 10 s for the full demo's 40k images (one PNG encoding each).

    Raises:
      FileNotFoundError: when the idx files are missing (install the Debian package dataset-fashion-mnist).
    """
    _require_idx_dir(idx_dir)
    if labelled + unlabeled > 60000 or test > 10000:
        raise ValueError("Fashion-MNIST has 60000 training and 10000 test images")
    if labelled < 1 or unlabeled < 0 or test < 1:
        raise ValueError(f"need labelled >= 1, unlabeled >= 0 and test >= 1 images, got {labelled}, {unlabeled}, "
                         f"{test}")
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, f"{name}.tfrecord") for name in ("labelled", "unlabeled", "test")}
    ids, pixels, labels = _idx_split(idx_dir, "train", labelled + unlabeled)
    counts = {"labelled": _write(paths["labelled"], ids[:labelled], pixels[:labelled], labels[:labelled]),
              "unlabeled": _write(paths["unlabeled"], ids[labelled:], pixels[labelled:],
                                  [-1] * (len(ids) - labelled))}
    counts["test"] = _write(paths["test"], *_idx_split(idx_dir, "test", test))
    return DemoSplits(paths["labelled"], paths["unlabeled"], paths["test"], counts)


def write_validation(path: str, first: int = 30000, count: int = 10000, idx_dir: str = FASHION_MNIST_DIR) -> int:
    """Writes training images `first` .. `first + count - 1`, labels kept, to `path`; returns how many.

    A validation split for choosing settings without the test set: the demo's defaults use the first
    30,000 training images, so the default range is disjoint from them (README "Choosing the
    temperatures" chose the distillation temperatures on it).

        .venv/bin/python -c "from demo import data; print(data.write_validation('/tmp/val/val.tfrecord'))"
    """
    if first < 0 or count < 1 or first + count > 60000:
        raise ValueError(f"need 0 <= first and 1 <= count with first + count <= 60000 (Fashion-MNIST's training "
                         f"images), got first={first}, count={count}")
    _require_idx_dir(idx_dir)
    ids, pixels, labels = _idx_split(idx_dir, "train", first + count)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    return _write(path, ids[first:], pixels[first:], labels[first:])


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
