"""Augmented views: the crop boxes and flips that teacher and student both see.

Beyer et al. 2022 ("Knowledge distillation: A good teacher is patient and consistent") showed that a
student must see the same augmented view its teacher saw. Extraction samples views here and stores
them in the soft-label record; the trainer replays a stored view through the same `crop_view` (for a
JPEG, its `patch_view` on the decoded window: distillery.record_pixels), so both models see the same
pixels (up to the re-encoding of the stored image). `crop_view` is the definition of a view's pixels;
host code outside a graph (extraction's workers) computes the same pixels with distillery.numpy_views.

Views are a pure function of (image id, seed): a rerun of the extraction writes the same records.
V = 1 is the centre crop (a centred square of 87.5% of the shorter side, as "resize 256, crop 224"),
not flipped; evaluation everywhere uses the same crop (`eval_view`). V > 1 samples
RandomResizedCrop boxes (Szegedy et al. 2015: area fraction in [min_scale, 1], aspect ratio in
[3/4, 4/3], ten tries then the centre crop) and a flip with probability 1/2.

    python -c "from distillery import views; print(views.sample_views('img1', 0, 4, 480, 640))"
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from distillery import records

CENTRAL_FRACTION = 0.875
DEFAULT_MIN_SCALE = 0.08
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


def _rng_for(image_id: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{image_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def centre_crop(height: int, width: int, central_fraction: float = CENTRAL_FRACTION) -> np.ndarray:
    """[4] box (y_min, x_min, y_max, x_max), as fractions, of the centred square whose side is
    `central_fraction` of the shorter side (so a 500x375 photo is cropped, not squashed)."""
    side = central_fraction * min(height, width)
    y_margin, x_margin = (height - side) / (2 * height), (width - side) / (2 * width)
    return np.array([y_margin, x_margin, 1 - y_margin, 1 - x_margin], np.float64)


def centre_crop_tensor(height, width, central_fraction: float = CENTRAL_FRACTION) -> tf.Tensor:
    """`centre_crop` for sizes known only in the graph (tf.data): a [4] float32 tensor."""
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    side = central_fraction * tf.minimum(height, width)
    y_margin, x_margin = (height - side) / (2 * height), (width - side) / (2 * width)
    return tf.stack([y_margin, x_margin, 1 - y_margin, 1 - x_margin])


def sample_views(image_id: str, seed: int, num_views: int, height: int, width: int,
                 min_scale: float = DEFAULT_MIN_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic views of one image.

    Args:
      image_id: the stable image id; with `seed` it fixes every view.
      seed: the extraction's seed.
      num_views: V; 1 gives the centre crop without flip.
      height, width: the image size in pixels (boxes respect its aspect ratio).
      min_scale: smallest area fraction of a random crop.

    Returns:
      crops [V, 4] float32 on the record's uint16 grid, flips [V] bool.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if num_views == 1:
        return records.quantize_crops(centre_crop(height, width)[None, :]), np.zeros(1, bool)
    rng = _rng_for(image_id, seed)
    crops, flips = [], []
    area = float(height * width)
    log_ratio = (math.log(ASPECT_RATIO_RANGE[0]), math.log(ASPECT_RATIO_RANGE[1]))
    for _ in range(num_views):
        box = None
        for _ in range(10):
            target_area = area * rng.uniform(min_scale, 1.0)
            ratio = math.exp(rng.uniform(*log_ratio))
            crop_width = math.sqrt(target_area * ratio)
            crop_height = math.sqrt(target_area / ratio)
            if 1 <= crop_width <= width and 1 <= crop_height <= height:
                top = rng.uniform(0, height - crop_height)
                left = rng.uniform(0, width - crop_width)
                box = [top / height, left / width, (top + crop_height) / height, (left + crop_width) / width]
                break
        crops.append(box if box is not None else centre_crop(height, width))
        flips.append(bool(rng.integers(0, 2)))
    return records.quantize_crops(np.array(crops)), np.array(flips, bool)


def random_view_tensor(height, width, seed: tf.Tensor,
                       min_scale: float = DEFAULT_MIN_SCALE) -> tuple[tf.Tensor, tf.Tensor]:
    """A random view drawn in the graph from the distribution of `sample_views` (V > 1): area fraction
    in [min_scale, 1], aspect ratio log-uniform in [3/4, 4/3], flip with probability 1/2; a box that does
    not fit is clipped to the image instead of retried. For training on the fly the model that labels
    the views (the demo's teacher), so it has seen views like the stored ones.

    Args:
      height, width: image size (scalars, tensors allowed).
      seed: [2] int stateless seed.
      min_scale: smallest area fraction.

    Returns:
      ([4] float32 box (y_min, x_min, y_max, x_max) as fractions, scalar bool flip).
    """
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    scale, log_ratio, top, left, flip = tf.unstack(tf.random.stateless_uniform([5], seed=seed))
    low, high = math.log(ASPECT_RATIO_RANGE[0]), math.log(ASPECT_RATIO_RANGE[1])
    area = height * width * (min_scale + (1.0 - min_scale) * scale)
    ratio = tf.exp(low + (high - low) * log_ratio)
    crop_width = tf.minimum(tf.sqrt(area * ratio), width)
    crop_height = tf.minimum(tf.sqrt(area / ratio), height)
    top = top * (height - crop_height)
    left = left * (width - crop_width)
    box = tf.stack([top / height, left / width, (top + crop_height) / height, (left + crop_width) / width])
    return box, flip < 0.5


def pixel_box(crop, height, width):
    """Integer pixel rows/columns [y0, y1) x [x0, x1) of a fractional box; never empty.

    Works on Python numbers and on scalar tensors alike (tf.data and eager).
    """
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    crop = tf.cast(crop, tf.float32)
    y0 = tf.clip_by_value(tf.cast(tf.round(crop[0] * height_f), tf.int32), 0, tf.cast(height, tf.int32) - 1)
    x0 = tf.clip_by_value(tf.cast(tf.round(crop[1] * width_f), tf.int32), 0, tf.cast(width, tf.int32) - 1)
    y1 = tf.clip_by_value(tf.cast(tf.round(crop[2] * height_f), tf.int32), y0 + 1, tf.cast(height, tf.int32))
    x1 = tf.clip_by_value(tf.cast(tf.round(crop[3] * width_f), tf.int32), x0 + 1, tf.cast(width, tf.int32))
    return y0, y1, x0, x1


def crop_view(image: tf.Tensor, crop: tf.Tensor, flip: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """One view of an image: crop the box, flip if asked, resize (bilinear, antialiased).

    Args:
      image: [H, W, 3] uint8 (or float) RGB.
      crop: [4] fractions (y_min, x_min, y_max, x_max).
      flip: scalar bool.
      size: output side, or (height, width).

    Returns:
      [height, width, 3] float32 pixels in 0..255.
    """
    shape = tf.shape(image)
    y0, y1, x0, x1 = pixel_box(crop, shape[0], shape[1])
    return patch_view(image[y0:y1, x0:x1, :], flip, size)


def patch_view(patch: tf.Tensor, flip: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """The rest of `crop_view` once its box is cut out: resize (bilinear, antialiased), flip if asked, as
    [height, width, 3] float32 0..255. For a caller that has only the box's pixels (a JPEG decoded in a
    window: distillery.record_pixels)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    # Antialiasing only changes a downscale: when the box is no bigger than the output on both sides, the
    # antialiased kernel is the plain bilinear one (equal to ~1e-3 of 255, float rounding), and TensorFlow's
    # antialiased resize (ScaleAndTranslate) costs ~3x the plain ResizeBilinear: it was 2/3 of the
    # trainer's input pipeline on the demo's upscaled 32x32 views (parse + decode + crop 4,000 -> 12,000
    # images/s on 2 cores with the plain kernel; the whole pipeline, measured after, 3,700 -> 5,900).
    # Both take the uint8 box as it is (they compute in float32), and the flip mirrors the resized view:
    # the same pixels as mirroring the box first (to ~1e-3 of 255), without a float copy and a mirrored
    # copy of the whole box (docs/results.md "Extraction").
    shape = tf.shape(patch)
    upscale = tf.logical_and(shape[0] <= size[0], shape[1] <= size[1])
    resized = tf.cond(upscale,
                      lambda: tf.image.resize(patch, size, method="bilinear", antialias=False),
                      lambda: tf.image.resize(patch, size, method="bilinear", antialias=True))
    resized = tf.cast(resized, tf.float32)
    resized = tf.cond(tf.cast(flip, tf.bool), lambda: tf.reverse(resized, axis=[1]), lambda: resized)
    return tf.clip_by_value(resized, 0.0, 255.0)


def eval_view(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """The evaluation view of an image: its centre crop, not flipped (trainer and benchmark alike)."""
    shape = tf.shape(image)
    return crop_view(image, centre_crop_tensor(shape[0], shape[1]), False, size)


@functools.cache
def compiled_eval_views(size: tuple[int, int]) -> Callable:
    """`eval_view` of a batch of uint8 images of one shape, [N, H, W, 3] -> [N, h, w, 3] float32, in one
    graph call (eagerly that is ~15 ops and several ms per image). The benchmark's accuracy pass sends 64
    images per call: one call per image was 2/3 of that pass over the demo's test images (cProfile); the
    per-record paths (the Beam accuracy job) send a batch of one. Cached per process."""
    signature = [tf.TensorSpec([None, None, None, 3], tf.uint8)]

    def eval_all(images):
        return tf.map_fn(lambda image: eval_view(image, tuple(size)), images,
                         fn_output_signature=tf.TensorSpec([size[0], size[1], 3], tf.float32))

    return tf.function(eval_all, input_signature=signature)
