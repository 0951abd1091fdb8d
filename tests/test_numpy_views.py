"""Tests of the host-side views (distillery.numpy_views) against their definition, `views.crop_view`."""

import numpy as np
import pytest
import tensorflow as tf

from distillery import numpy_views, views


def test_downscale_weights_are_the_widened_triangle_renormalized_at_the_border():
    # 4 -> 2: samples at 1.0 and 3.0, the triangle widened to radius 2; weights 1 - |source + 0.5 - sample| / 2
    # over the sources inside [ceil(sample - 2.5), floor(sample + 1.5)], divided by their sum (7/4).
    np.testing.assert_allclose(numpy_views.resize_weights(4, 2).toarray(),
                               [[3 / 7, 3 / 7, 1 / 7, 0], [0, 1 / 7, 3 / 7, 3 / 7]], atol=1e-7)


def test_upscale_weights_are_plain_bilinear_with_half_pixel_centres():
    # 2 -> 4: samples at 0.25, 0.75, 1.25, 1.75 on pixel centres 0.5 and 1.5, clamped at the borders.
    np.testing.assert_allclose(numpy_views.resize_weights(2, 4).toarray(),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-7)


@pytest.mark.parametrize("in_size,out_size", [(380, 224), (97, 224), (1, 5), (7, 3), (224, 224)])
def test_weights_equal_tensorflows_resize_of_the_identity(in_size, out_size):
    # Resizing the identity's rows gives the resize's own weight matrix: [in, 1, in] -> [out, 1, in].
    identity = tf.eye(in_size)[:, None, :]
    expected = tf.image.resize(identity, (out_size, 1), antialias=True).numpy()[:, 0, :]
    np.testing.assert_allclose(numpy_views.resize_weights(in_size, out_size).toarray(), expected, atol=1e-6)


@pytest.mark.parametrize("height,width,size,num_views", [
    (300, 400, (224, 224), 6),  # a photo to the teacher's input: boxes of 5-100% of it, down- and upscaled
    (40, 30, (16, 12), 5),      # a non-square output
    (10, 8, (16, 12), 5),       # upscale (the plain bilinear branch of patch_view)
    (1, 1, (4, 4), 2),          # one pixel
])
def test_crop_views_equal_crop_view_per_view(height, width, size, num_views):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    crops, flips = views.sample_views("some/image.jpg", 1, num_views, height, width, min_scale=0.05)
    ours = numpy_views.crop_views(image, crops, flips, size)
    assert ours.shape == (num_views, *size, 3) and ours.dtype == np.float32
    for index in range(num_views):
        assert numpy_views.pixel_box(crops[index], height, width) == tuple(
            int(value) for value in views.pixel_box(crops[index], height, width))
        expected = views.crop_view(tf.constant(image), crops[index], flips[index], size).numpy()
        np.testing.assert_allclose(ours[index], expected, atol=1e-2)  # float32 summation order: ~5e-3 of 255
    if num_views > 2:
        assert flips.any() and not flips.all()  # both the mirrored and the plain view were compared


def test_one_side_up_the_other_down_and_the_flip_mirrors_the_resized_box():
    image = np.random.default_rng(5).integers(0, 256, (3, 500, 3), dtype=np.uint8)
    whole = np.array([[0.0, 0.0, 1.0, 1.0]] * 2, np.float32)  # 3 -> 7 rows up, 500 -> 9 columns down
    ours = numpy_views.crop_views(image, whole, np.array([False, True]), (7, 9))
    for index, flip in enumerate((False, True)):
        expected = views.crop_view(tf.constant(image), whole[index], flip, (7, 9)).numpy()
        np.testing.assert_allclose(ours[index], expected, atol=1e-2)
    # The mirrored view is the resize of the mirrored box (the triangle kernel is symmetric).
    mirrored = tf.image.resize(image[:, ::-1].astype(np.float32), (7, 9), antialias=True).numpy()
    np.testing.assert_allclose(ours[1], np.clip(mirrored, 0, 255), atol=1e-2)
    np.testing.assert_allclose(ours[1], ours[0][:, ::-1], atol=1e-6)


def test_float_images_and_no_views():
    image = np.random.default_rng(3).uniform(0, 255, (20, 24, 3)).astype(np.float32)
    crop = np.array([[0.1, 0.2, 0.8, 0.9]], np.float32)
    np.testing.assert_allclose(numpy_views.crop_views(image, crop, np.array([True]), (6, 7))[0],
                               views.crop_view(tf.constant(image), crop[0], True, (6, 7)).numpy(), atol=1e-2)
    none = numpy_views.crop_views(image, np.zeros((0, 4), np.float32), np.zeros(0, bool), 8)
    assert none.shape == (0, 8, 8, 3)  # no views: an empty batch, not an error
