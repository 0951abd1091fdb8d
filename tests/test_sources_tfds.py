"""tfds: sources under tfds.testing.mock_data (nothing downloaded), and the split-to-shard arithmetic."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from distillery import images
from pipelines.source_tfds import TfdsShard, absolute_ranges, range_shards
from pipelines.sources import SourceExample, SourceSpecError, iterate_source, open_source


def reference_examples(name: str, split: str, keys: tuple[str, ...], count: int) -> list[dict]:
    """What TFDS itself reads for the same (mocked) examples, the image left encoded."""
    decoders = tfds.decode.PartialDecoding({key: True for key in keys},
                                           decoders={"image": tfds.decode.SkipDecoding()})
    dataset = tfds.load(name, split=split, decoders=decoders, shuffle_files=False)
    return list(tfds.as_numpy(dataset.take(count)))


def test_imagenet2012_yields_encoded_images_file_names_and_labels():
    with tfds.testing.mock_data(num_examples=4):
        source = open_source("tfds:imagenet2012:validation", max_examples=3)
        source = pickle.loads(pickle.dumps(source))  # as a Beam worker receives it
        items = list(iterate_source(source))
        reference = reference_examples("imagenet2012", "validation", ("image", "file_name", "label"), 3)
    assert len(items) == 3 and all(isinstance(item, SourceExample) for item in items)
    for item, expected in zip(items, reference):
        assert item.image_id == expected["file_name"].decode()
        assert item.label == int(expected["label"]) and 0 <= item.label < 1000
        assert item.encoded == expected["image"]
        assert item.encoded[:3] == b"\xff\xd8\xff"  # imagenet2012 stores JPEG
        pixels = images.decode_rgb(item.encoded)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert [item.origin for item in items] == [f"tfds:imagenet2012:validation[{index}]" for index in range(3)]


def test_open_images_v4_is_unlabeled_with_file_name_ids():
    with tfds.testing.mock_data(num_examples=3):
        items = list(iterate_source(open_source("tfds:open_images_v4:train")))
        reference = reference_examples("open_images_v4", "train", ("image", "image/filename"), 3)
    assert [item.label for item in items] == [-1, -1, -1]
    assert [item.image_id for item in items] == [expected["image/filename"].decode() for expected in reference]
    for item, expected in zip(items, reference):
        assert item.encoded == expected["image"]
        assert images.decode_rgb(item.encoded).shape[2] == 3


def test_split_expressions_become_absolute_ranges():
    sizes = {"train": 1000, "validation": 50}
    assert absolute_ranges("train[:10]+validation[5:8]", sizes) == [("train", 0, 10), ("validation", 5, 8)]
    assert absolute_ranges("train[10%:20%]", sizes) == [("train", 100, 200)]
    assert absolute_ranges("validation", sizes) == [("validation", 0, 50)]
    with pytest.raises(ValueError):
        absolute_ranges("test", sizes)


def test_range_shards_cut_and_cap_in_order():
    ranges = [("train", 0, 10), ("validation", 5, 8)]
    assert range_shards(ranges, None, 4) == [
        TfdsShard("train", 0, 4), TfdsShard("train", 4, 8), TfdsShard("train", 8, 10), TfdsShard("validation", 5, 8)]
    assert range_shards(ranges, 12, 4) == [
        TfdsShard("train", 0, 4), TfdsShard("train", 4, 8), TfdsShard("train", 8, 10), TfdsShard("validation", 5, 7)]
    assert range_shards(ranges, 3, 4) == [TfdsShard("train", 0, 3)]


def test_bad_tfds_specs_name_the_spec():
    with tfds.testing.mock_data(num_examples=1):
        with pytest.raises(SourceSpecError, match="tfds:imagenet2012:train\\[::\\]"):
            open_source("tfds:imagenet2012:train[::]")
    with pytest.raises(SourceSpecError, match="tfds:no_such_dataset_xyz"):
        open_source("tfds:no_such_dataset_xyz")


def test_prepared_dataset_reads_in_index_range_shards(tmp_path, monkeypatch):
    """A really prepared (tiny) TFDS dataset: split expression -> range shards -> exact pixels back."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    originals = {}

    def split(count: int, offset: int):
        pixels = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
        names = [f"img{offset + index}.png" for index in range(count)]
        for index, (name, image) in enumerate(zip(names, pixels)):
            originals[name] = (image, (offset + index) % 3)
        return tf.data.Dataset.from_tensor_slices(
            {"image": pixels, "label": [(offset + index) % 3 for index in range(count)], "file_name": names})

    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 3)),
                                           "label": tfds.features.ClassLabel(num_classes=3),
                                           "file_name": tfds.features.Text()})
    tfds.dataset_builders.TfDataBuilder(
        name="distillery_tiny_images", version="1.0.0", data_dir=str(tmp_path), features=features,
        split_datasets={"train": split(7, 0), "validation": split(3, 100)}).download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))

    source = open_source("tfds:distillery_tiny_images:train[2:]+validation", max_examples=7, examples_per_shard=2)
    assert source.shards() == [TfdsShard("train", 2, 4), TfdsShard("train", 4, 6), TfdsShard("train", 6, 7),
                               TfdsShard("validation", 0, 2)]
    items = list(iterate_source(pickle.loads(pickle.dumps(source))))
    stored = list(tfds.as_numpy(tfds.load("distillery_tiny_images", split="train[2:]+validation[:2]",
                                          data_dir=str(tmp_path), shuffle_files=False)))
    assert [item.image_id for item in items] == [example["file_name"].decode() for example in stored]
    for item in items:
        image, label = originals[item.image_id]
        assert item.label == label
        np.testing.assert_array_equal(images.decode_rgb(item.encoded), image)  # PNG: lossless
    with pytest.raises(SourceSpecError, match="tfds:distillery_tiny_images:test"):
        open_source("tfds:distillery_tiny_images:test")  # no such split
    with pytest.raises(SourceSpecError, match="incompatible"):
        open_source("tfds:distillery_tiny_images:train[:50]")


def test_unprepared_dataset_fails_at_open(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(SourceSpecError, match="tfds:imagenet2012:validation.*not prepared"):
        open_source("tfds:imagenet2012:validation")
