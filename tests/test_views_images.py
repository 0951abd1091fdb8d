"""Tests of view sampling, view cropping (eager and inside tf.data.map) and image decoding."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from distillery import images, records, views


def _encode(array, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_one_view_is_the_unflipped_centre_crop():
    crops, flips = views.sample_views("any", 0, 1, 300, 400)
    # A centred square of 0.875 x 300 = 262.5 pixels: rows 18.75..281.25 of 300, columns 68.75..331.25 of 400.
    np.testing.assert_allclose(crops[0], [18.75 / 300, 68.75 / 400, 281.25 / 300, 331.25 / 400],
                               atol=1 / records.CROP_SCALE)
    assert not flips[0]


def test_eval_view_is_the_centre_crop_eagerly_and_in_dataset_map():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    expected = views.crop_view(image, views.centre_crop(30, 50).astype(np.float32), False, 8).numpy()
    np.testing.assert_allclose(views.eval_view(tf.constant(image), 8).numpy(), expected, atol=1e-4)
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(lambda img: views.eval_view(img, 8))))
    np.testing.assert_allclose(mapped.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(views.centre_crop_tensor(30, 50).numpy(), views.centre_crop(30, 50), atol=1e-6)


def test_views_are_deterministic_per_id_and_seed_and_within_bounds():
    first = views.sample_views("n01440764/a.jpg", 3, 8, 240, 320)
    again = views.sample_views("n01440764/a.jpg", 3, 8, 240, 320)
    other_seed = views.sample_views("n01440764/a.jpg", 4, 8, 240, 320)
    other_id = views.sample_views("n01440764/b.jpg", 3, 8, 240, 320)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other_seed[0]) and not np.array_equal(first[0], other_id[0])
    crops = first[0]
    assert np.all(crops >= 0) and np.all(crops <= 1)
    assert np.all(crops[:, 2] > crops[:, 0]) and np.all(crops[:, 3] > crops[:, 1])
    area = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
    assert np.all(area >= 0.08 - 1e-3)
    aspect = (crops[:, 3] - crops[:, 1]) * 320 / ((crops[:, 2] - crops[:, 0]) * 240)
    assert np.all(aspect >= 0.75 - 1e-2) and np.all(aspect <= 4 / 3 + 1e-2)
    # Stored == used: sampled boxes already sit on the record's grid.
    np.testing.assert_array_equal(records.quantize_crops(crops), crops)


def test_crop_view_equals_a_hand_crop_eagerly_and_in_dataset_map():
    image = np.arange(8 * 10 * 3, dtype=np.uint8).reshape(8, 10, 3)
    crop = np.array([0.25, 0.2, 0.75, 0.6], np.float32)  # rows 2..6, columns 2..6
    expected = image[2:6, 2:6, :].astype(np.float32)[:, ::-1, :]
    eager = views.crop_view(tf.constant(image), crop, True, 4).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors((image, crop, True)).map(
        lambda img, box, flip: views.crop_view(img, box, flip, 4))))
    np.testing.assert_allclose(eager, expected)
    np.testing.assert_allclose(mapped.numpy(), expected)


@pytest.mark.parametrize("size", [(32, 32), (12, 40), (8, 8)])  # upscale both sides, one side, neither
def test_crop_view_is_the_antialiased_resize_of_the_box(size):
    # crop_view skips the (slow) antialiased kernel when it cannot change the result, so the pixels
    # must match tf.image.resize(antialias=True) of the hand-cut box in every case.
    image = np.random.default_rng(3).integers(0, 256, (28, 30, 3), dtype=np.uint8)
    crop = np.array([0.25, 0.1, 0.75, 0.9], np.float32)  # rows 7..21, columns 3..27
    box = image[7:21, 3:27, :].astype(np.float32)
    expected = tf.image.resize(box, size, method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(views.crop_view(tf.constant(image), crop, False, size).numpy(), expected,
                               atol=2e-3)
    # and the downscale still antialiases: plain bilinear differs by whole pixel levels there
    if size == (8, 8):
        plain = tf.image.resize(box, size, method="bilinear", antialias=False).numpy()
        assert np.abs(plain - expected).max() > 1.0


def test_crop_view_never_empty_and_resizes():
    image = np.full((1, 1, 3), 200, np.uint8)
    out = views.crop_view(tf.constant(image), np.array([0.4, 0.4, 0.41, 0.41]), False, (5, 7)).numpy()
    assert out.shape == (5, 7, 3)
    np.testing.assert_allclose(out, 200.0)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "BMP")])
def test_decode_converts_every_mode_to_rgb(mode, fmt):
    rgb = np.zeros((6, 5, 3), np.uint8)
    rgb[:, :, 0] = 255
    pil = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    pil.save(buffer, fmt)
    decoded = images.decode_rgb(buffer.getvalue())
    assert decoded.shape == (6, 5, 3) and decoded.dtype == np.uint8
    if mode == "L":
        np.testing.assert_array_equal(decoded[..., 0], decoded[..., 1])  # gray replicated
    else:
        assert decoded[..., 0].mean() > 200 and decoded[..., 2].mean() < 60  # still red


def test_decode_alpha_composites_on_white_and_16_bit_scales_to_8_bit():
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black
    np.testing.assert_array_equal(images.decode_rgb(_encode(rgba, "PNG")), np.full((2, 2, 3), 255))
    sixteen = np.array([[0, 65535], [32896, 257]], np.uint16)
    decoded = images.decode_rgb(_png16(sixteen))
    np.testing.assert_array_equal(decoded[..., 0], [[0, 255], [128, 1]])


def _png16(array):
    buffer = io.BytesIO()
    Image.fromarray(array, "I;16").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"hello, I am a text file named photo.jpg\n", "not an image"),
    (bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)), "not an image"),
])
def test_decode_failures_carry_a_reason(data, reason):
    with pytest.raises(images.ImageDecodeError, match=reason):
        images.decode_rgb(data)


def test_truncated_jpeg_is_a_decode_error():
    data = _encode(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    with pytest.raises(images.ImageDecodeError, match="cannot decode"):
        images.decode_rgb(data[: len(data) // 2])


def test_large_jpeg_decodes_at_reduced_scale():
    data = _encode(np.full((2400, 3200, 3), 90, np.uint8), "JPEG")
    decoded = images.decode_rgb(data, min_side=224)
    assert decoded.shape == (300, 400, 3)  # 1/8 DCT scale keeps the shorter side >= 224
    assert abs(int(decoded.mean()) - 90) <= 2


def test_encode_bounded_limits_the_longer_side():
    encoded = images.encode_bounded(np.zeros((300, 600, 3), np.uint8), 128)
    assert images.decode_rgb(encoded).shape == (64, 128, 3)
