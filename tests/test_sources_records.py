"""tfrecord: and idx: sources: ids, labels, exact bytes, max_examples across files, corrupt input."""

from __future__ import annotations

import gzip
import io
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.source_records import encode_png
from pipelines.sources import ReadFailure, SourceExample, SourceSpecError, iterate_source, open_source
from pipelines.tfrecord_format import iterate_tfrecord

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def image_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def example(encoded: bytes | None, label: int | None = None, source_id: str | None = None,
            filename: str | None = None) -> bytes:
    feature = {}
    if encoded is not None:
        feature["image/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
    if label is not None:
        feature["image/class/label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    if source_id is not None:
        feature["image/source_id"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id.encode()]))
    if filename is not None:
        feature["image/filename"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecord(path: str, records: list[bytes], compression: str | None = None) -> None:
    with tf.io.TFRecordWriter(path, options=compression) as writer:
        for record in records:
            writer.write(record)


def test_tfrecord_ids_labels_bytes_and_cap_across_files(tmp_path):
    images = [image_bytes(seed) for seed in range(5)]
    write_tfrecord(str(tmp_path / "data-00000-of-00002"), [
        example(images[0], label=7, source_id="src-0", filename="f0.png"),
        example(images[1], label=3, filename="f1.png"),
        example(images[2]),
    ])
    write_tfrecord(str(tmp_path / "data-00001-of-00002"), [example(images[3], label=1), example(images[4], label=2)])
    items = list(iterate_source(open_source(f"tfrecord:{tmp_path}/data-*")))
    assert [(item.image_id, item.label, item.encoded) for item in items] == [
        ("src-0", 7, images[0]), ("f1.png", 3, images[1]), ("data-00000-of-00002:2", -1, images[2]),
        ("data-00001-of-00002:0", 1, images[3]), ("data-00001-of-00002:1", 2, images[4])]
    assert items[2].origin == f"{tmp_path}/data-00000-of-00002[2]"

    capped = open_source(f"tfrecord:{tmp_path}/data-*", max_examples=4)
    assert [(shard.path.rsplit("/", 1)[-1], shard.stop) for shard in capped.shards()] == [
        ("data-00000-of-00002", 3), ("data-00001-of-00002", 1)]
    assert [item.encoded for item in iterate_source(capped)] == images[:4]
    assert [shard.stop for shard in open_source(f"tfrecord:{tmp_path}/data-*", max_examples=2).shards()] == [2]


def test_tfrecord_gzip_and_framing_matches_tensorflow(tmp_path):
    records = [example(image_bytes(seed), label=seed) for seed in range(3)]
    path = str(tmp_path / "images.tfrecord.gz")
    write_tfrecord(path, records, compression="GZIP")
    assert [item.label for item in iterate_source(open_source(f"tfrecord:{path}"))] == [0, 1, 2]
    plain = str(tmp_path / "plain.tfrecord")
    write_tfrecord(plain, records)
    with open(plain, "rb") as file:
        assert list(iterate_tfrecord(file)) == records


def test_tfrecord_corruption_and_missing_image_become_read_failures(tmp_path):
    good = image_bytes(1)
    path = str(tmp_path / "bad.tfrecord")
    write_tfrecord(path, [example(good, label=4), example(None, label=5, source_id="no-image"), example(good)])
    with open(path, "rb") as file:
        data = bytearray(file.read())
    data[-10] ^= 0xFF  # flip a byte in the last record's payload
    with open(path, "wb") as file:
        file.write(bytes(data))
    items = list(iterate_source(open_source(f"tfrecord:{path}")))
    assert isinstance(items[0], SourceExample) and items[0].encoded == good
    assert isinstance(items[1], ReadFailure) and items[1].image_id == "no-image"
    assert "image/encoded" in items[1].reason
    assert isinstance(items[2], ReadFailure) and "CRC" in items[2].reason
    assert items[2].image_id == "bad.tfrecord:2"


def write_idx(path: str, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_idx_synthetic_split_png_and_shards(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), images)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), labels)
    source = open_source(f"idx:{tmp_path}:test", max_examples=5, examples_per_shard=2)
    assert [(shard.start, shard.stop) for shard in source.shards()] == [(0, 2), (2, 4), (4, 5)]
    items = list(iterate_source(source))
    assert [item.image_id for item in items] == ["test/00000", "test/00001", "test/00002", "test/00003",
                                                 "test/00004"]
    assert [item.label for item in items] == [3, 1, 4, 1, 5]
    for index, item in enumerate(items):
        assert item.encoded[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(item.encoded))), images[index])
    assert encode_png(images[0]) == items[0].encoded
    arrays_images, arrays_labels = source.arrays()  # the same first 5, unencoded
    np.testing.assert_array_equal(arrays_images, images[:5])
    np.testing.assert_array_equal(arrays_labels, labels[:5])
    assert source.image_id(4) == items[4].image_id
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        open_source(f"idx:{tmp_path}")  # default split train: absent here
    with pytest.raises(SourceSpecError, match="train or test"):
        open_source(f"idx:{tmp_path}:validation")


def test_idx_reads_real_fashion_mnist():
    if not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST idx files not in {FASHION_MNIST_DIR} (Debian package dataset-fashion-mnist)")
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as file:
        images = np.frombuffer(file.read()[16:], np.uint8).reshape(-1, 28, 28)
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as file:
        labels = np.frombuffer(file.read()[8:], np.uint8)
    source = open_source(f"idx:{FASHION_MNIST_DIR}:test", max_examples=300, examples_per_shard=128)
    assert len(source.shards()) == 3
    items = list(iterate_source(source))
    assert len(items) == 300 and items[-1].image_id == "test/00299"
    assert [item.label for item in items] == labels[:300].tolist()
    assert items[0].label == 9  # the first Fashion-MNIST test image is an ankle boot
    for index, item in enumerate(items):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(item.encoded))), images[index])
    train = open_source(f"idx:{FASHION_MNIST_DIR}", max_examples=2)
    assert [item.image_id for item in iterate_source(train)] == ["train/00000", "train/00001"]


def test_idx_reads_the_whole_real_training_split():
    # The training images are 47 MB once decompressed: more than one buffer of Beam's CompressedFile,
    # whose read() without a size stops after 16 MiB (a truncation this test caught).
    path = os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
    if not os.path.exists(path):
        pytest.skip(f"Fashion-MNIST idx files not in {FASHION_MNIST_DIR} (Debian package dataset-fashion-mnist)")
    with gzip.open(path) as file:
        last_image = np.frombuffer(file.read()[16:], np.uint8).reshape(-1, 28, 28)[-1]
    source = open_source(f"idx:{FASHION_MNIST_DIR}:train", examples_per_shard=1000)
    shards = source.shards()
    assert len(shards) == 60
    items = list(source.read_shard(shards[-1]))
    assert len(items) == 1000 and items[-1].image_id == "train/59999"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(items[-1].encoded))), last_image)


def test_a_corrupt_tfrecord_under_max_examples_is_read_up_to_the_damage_not_a_traceback(tmp_path):
    good = image_bytes(2)
    path = str(tmp_path / "torn.tfrecord")
    write_tfrecord(path, [example(good, label=1), example(good, label=2), example(good, label=3)])
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(data[:-20])  # the last record is cut short
    source = open_source(f"tfrecord:{path}", max_examples=5)  # counting the file used to raise here
    items = list(iterate_source(source))
    assert [item.label for item in items[:2]] == [1, 2]
    assert isinstance(items[2], ReadFailure) and "truncated" in items[2].reason and path in items[2].origin
    assert len(items) == 3
