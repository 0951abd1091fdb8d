"""distillery.record_pixels: one record gives the same pixels, to the bit, in the trainer's tf.data pipeline
(graph) and in calibration / evaluation (NumPy), for every image format; path-only records; corrupt images;
channels.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_record_pixels.py
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from compress import quantize
from distillery import images, record_pixels, records, views
from trainer import data

CLASSES = 10
SIZE = 20
TEACHER_SIZE = (12, 16)
CROPS = np.array([[0.1, 0.2, 0.9, 0.7], [0.0, 0.0, 0.5, 1.0]])  # one downscale, one upscale at SIZE
FLIPS = np.array([True, False])


def _image(seed: int, height: int = 30, width: int = 34) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encoded(kind: str, seed: int = 0) -> bytes:
    """Bytes of one image in the format `kind`: what extraction stores (JPEG), what the benchmarks store
    (RGB and grey PNG), and originals extraction accepts (alpha, palette, 16-bit, CMYK, GIF, BMP, TIFF)."""
    rgb = _image(seed)
    if kind == "jpeg-extraction":
        return images.encode_bounded(rgb, max_side=24)
    alpha = np.random.default_rng(seed + 100).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    pil, save = {
        "jpeg": (Image.fromarray(rgb), {"format": "JPEG", "quality": 90}),
        "jpeg-progressive": (Image.fromarray(rgb), {"format": "JPEG", "quality": 90, "progressive": True}),
        "jpeg-grey": (Image.fromarray(rgb).convert("L"), {"format": "JPEG"}),
        "jpeg-cmyk": (Image.fromarray(rgb).convert("CMYK"), {"format": "JPEG"}),
        "png": (Image.fromarray(rgb), {"format": "PNG"}),
        "png-grey": (Image.fromarray(rgb[..., 0]), {"format": "PNG"}),
        "png-rgba": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), {"format": "PNG"}),
        "png-grey-alpha": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("LA"), {"format": "PNG"}),
        "png-palette": (Image.fromarray(rgb).convert("P"), {"format": "PNG"}),
        "png-16bit": (Image.fromarray(rgb[..., 0].astype(np.uint16) * 257 + 3).convert("I;16"), {"format": "PNG"}),
        "gif": (Image.fromarray(rgb).convert("P"), {"format": "GIF"}),
        "bmp": (Image.fromarray(rgb), {"format": "BMP"}),
        "tiff": (Image.fromarray(rgb), {"format": "TIFF"}),
    }[kind]
    buffer = io.BytesIO()
    pil.save(buffer, **save)
    return buffer.getvalue()


def _encoded_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


KINDS = ["jpeg", "jpeg-extraction", "jpeg-progressive", "jpeg-grey", "jpeg-cmyk", "png", "png-grey", "png-rgba",
         "png-grey-alpha", "png-palette", "png-16bit", "gif", "bmp", "tiff"]


def _record(label: int, encoded: bytes = b"", image_path: str = "") -> records.SoftLabelRecord:
    logits = np.random.default_rng(label).normal(size=(len(CROPS), CLASSES)).astype(np.float32)
    return records.make_record(f"img{label}", label, ["t"], CROPS, FLIPS, logits, CLASSES, encoded_image=encoded,
                               image_path=image_path)


@pytest.mark.parametrize("kind", KINDS)
def test_graph_and_numpy_decoders_give_extractions_pixels(tmp_path, kind):
    """Stored bytes and an original at image/path decode, in the graph (eagerly and inside tf.data) and in
    NumPy, to exactly what extraction's decoder gives."""
    encoded = _encoded(kind)
    expected = images.decode_rgb(encoded)
    path = tmp_path / "original"
    path.write_bytes(encoded)
    for record in (_record(0, encoded=encoded), _record(0, image_path=str(path))):
        np.testing.assert_array_equal(record_pixels.decode(record), expected)
        np.testing.assert_array_equal(
            record_pixels.decode_tensor(tf.constant(record.encoded_image), tf.constant(record.image_path)).numpy(),
            expected)
        mapped = tf.data.Dataset.from_tensors((record.encoded_image, record.image_path)).map(
            record_pixels.decode_tensor)
        np.testing.assert_array_equal(next(iter(mapped)).numpy(), expected)


@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory):
    """One record file, one record per format: stored bytes, and path-only records whose originals are files."""
    directory = tmp_path_factory.mktemp("record_pixels")
    items = [_record(0, encoded=_encoded("jpeg-extraction", 0)), _record(1, encoded=_encoded("png", 1)),
             _record(2, encoded=_encoded("png-grey", 2)), _record(3, encoded=_encoded("png-rgba", 3))]
    for label, kind in ((4, "png-rgba"), (5, "jpeg-cmyk"), (6, "png-16bit"), (7, "jpeg")):
        path = directory / f"original-{label}"
        path.write_bytes(_encoded(kind, label))
        items.append(_record(label, image_path=str(path)))
    records.write_records(str(directory / "mixed-00000"), items)
    return str(directory / "mixed-*"), {record.label: record for record in items}


def test_the_trainers_pipeline_feeds_the_numpy_stored_view_of_the_same_record(mixed_records):
    pattern, by_label = mixed_records
    dataset = data.make_dataset(pattern, SIZE, 4, training=True, seed=1, teacher_image_size=TEACHER_SIZE)
    seen = set()
    for batch, targets in dataset.take(8):  # 32 examples: four passes over the 8 records
        for pixels, teacher_pixels, label in zip(batch.numpy(), targets["teacher_images"].numpy(),
                                                 targets["labels"].numpy()):
            record = by_label[int(label)]
            errors = [np.abs(pixels - record_pixels.stored_view(record, view, SIZE)).max() for view in range(2)]
            view = int(np.argmin(errors))
            assert errors[view] == 0, (int(label), errors)
            assert errors[1 - view] > 10  # the two stored views differ: the match says which one was fed
            np.testing.assert_array_equal(teacher_pixels, record_pixels.stored_view(record, view, TEACHER_SIZE))
            seen.add((int(label), view))
    assert {label for label, _ in seen} == set(by_label)
    assert {view for _, view in seen} == {0, 1}


def test_the_trainers_evaluation_feeds_the_numpy_eval_view(mixed_records):
    pattern, by_label = mixed_records
    batches = list(data.make_dataset(pattern, SIZE, 3, training=False))
    fed = np.concatenate([batch.numpy() for batch, _ in batches])
    labels = np.concatenate([targets["labels"].numpy() for _, targets in batches])
    assert labels.tolist() == sorted(by_label)
    expected = record_pixels.eval_views([record_pixels.decode(by_label[label]) for label in labels], SIZE)
    for label, pixels, want in zip(labels, fed, expected):
        np.testing.assert_array_equal(pixels, want, err_msg=f"record {label}")
        np.testing.assert_array_equal(want, record_pixels.eval_view(by_label[label], SIZE))


def test_a_stored_view_by_value():
    """Crop box = the whole image, flipped, at the image's own size: the mirrored image, to the bit; the
    centre crop of a 32x32 image at 28x28 is its central 28x28 pixels."""
    rgb = _image(4, 32, 32)
    record = records.make_record("whole", 1, ["t"], [[0, 0, 1, 1]], [True], np.zeros((1, CLASSES)), CLASSES,
                                 encoded_image=_encoded_png(rgb))
    np.testing.assert_array_equal(record_pixels.stored_view(record, 0, 32), rgb[:, ::-1].astype(np.float32))
    np.testing.assert_array_equal(record_pixels.eval_view(record, 28), rgb[2:30, 2:30].astype(np.float32))
    graph = record_pixels.view_tensor(record_pixels.decode_tensor(record.encoded_image, ""), record.crops[0], True, 32)
    np.testing.assert_array_equal(graph.numpy(), rgb[:, ::-1].astype(np.float32))


def test_a_path_only_record_decodes_from_its_path(tmp_path):
    rgb = _image(5)
    path = tmp_path / "photo.png"
    path.write_bytes(_encoded_png(rgb))
    record = _record(3, image_path=str(path))
    assert record.encoded_image == b""
    np.testing.assert_array_equal(record_pixels.decode(record), rgb)
    expected = views.crop_view(rgb, record.crops[1], bool(record.flips[1]), SIZE).numpy()
    np.testing.assert_allclose(record_pixels.stored_view(record, 1, SIZE), expected, atol=1e-3)
    assert record_pixels.image_bytes(record) == path.read_bytes()


def test_a_corrupt_image_is_reported_not_crashed_on(caplog):
    broken = _record(2, encoded=b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(images.ImageDecodeError, match="cannot decode image"):
        record_pixels.decode(broken)
    with caplog.at_level(logging.WARNING):
        assert record_pixels.decode_or_none(broken) is None
    assert "record img2: image skipped: cannot decode image" in caplog.text
    assert record_pixels.decode_or_none(_record(1, encoded=_encoded("png"))) is not None


def test_channels_by_value():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.float32)
    grey = record_pixels.to_channels(pixels, 1)
    assert grey.shape == (1, 4, 1) and grey.dtype == np.float32
    np.testing.assert_allclose(grey[0, :, 0], [0.2989 * 255, 0.587 * 255, 0.114 * 255,
                                               0.2989 * 10 + 0.587 * 20 + 0.114 * 30], rtol=1e-3)
    np.testing.assert_array_equal(record_pixels.to_channels(pixels, 3), pixels)
    with pytest.raises(record_pixels.UnsupportedChannelsError, match="models with 2 input channels are not supported"):
        record_pixels.to_channels(pixels, 2)


def test_calibration_reads_the_stored_view_and_reports_bad_channels(mixed_records):
    pattern, by_label = mixed_records
    calibration = quantize.calibration_images(pattern, (SIZE, SIZE), steps=3, channels=1)
    assert len(calibration) == 3 and calibration[0].shape == (1, SIZE, SIZE, 1)
    for label, image in zip(sorted(by_label), calibration):
        np.testing.assert_array_equal(image[0], record_pixels.stored_view(by_label[label], 0, SIZE, 1))
    with pytest.raises(quantize.QuantizeError, match="models with 2 input channels are not supported"):
        quantize.calibration_images(pattern, (SIZE, SIZE), steps=1, channels=2)
