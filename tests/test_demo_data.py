"""The demo's inputs: padded Fashion-MNIST images whose evaluation view is the original image, and the
teacher's on-the-fly views drawn like the stored ones."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from demo import data as demo_data
from demo import teacher as demo_teacher
from distillery import views


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_padding_makes_the_evaluation_view_the_original_image():
    original = np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8)
    padded = np.asarray(Image.open(io.BytesIO(demo_data.pad_png(_png(original)))))
    assert padded.shape == (32, 32)
    assert (padded[:2] == 0).all() and (padded[-2:] == 0).all() and (padded[:, :2] == 0).all()
    box = views.centre_crop(32, 32)
    y0, y1, x0, x1 = (int(value) for value in views.pixel_box(box, 32, 32))
    np.testing.assert_array_equal(padded[y0:y1, x0:x1], original)


def test_random_views_follow_the_stored_view_distribution():
    boxes, flips = [], []
    for position in range(400):
        box, flip = views.random_view_tensor(32, 32, tf.constant([7, position], tf.int64), min_scale=0.6)
        boxes.append(box.numpy())
        flips.append(bool(flip))
    boxes = np.array(boxes)
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Clipping a box that does not fit only makes it smaller than asked, and only slightly (ratio <= 4/3).
    assert areas.max() <= 1 + 1e-6 and areas.min() >= 0.6 * 0.75 - 1e-6
    assert np.median(areas) > 0.7
    assert 0.4 < np.mean(flips) < 0.6
    # Stateless: the same seed gives the same view.
    again, _ = views.random_view_tensor(32, 32, tf.constant([7, 3], tf.int64), min_scale=0.6)
    np.testing.assert_array_equal(again.numpy(), boxes[3])


def test_teacher_training_views_and_eval_top1():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 4
    batch_images, batch_labels = next(iter(demo_teacher.augmented_dataset(images, labels, 8, 0.6, seed=0)))
    assert batch_images.shape == (8, 32, 32, 3) and batch_images.dtype == tf.float32
    assert set(batch_labels.numpy()) <= set(range(4))
    model = demo_teacher.build_teacher(32, 4, width=4)
    expected = np.mean(np.argmax(model.predict(np.stack([views.eval_view(image, (32, 32)).numpy()
                                                         for image in images]), verbose=0), 1) == labels)
    assert demo_teacher.top1_on_eval_view(model, images, labels) == expected
