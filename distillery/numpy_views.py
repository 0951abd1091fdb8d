"""`views.crop_view` computed on the host with NumPy and SciPy, for the callers outside a TF graph.

Extraction's workers and quantization's calibration (`record_pixels.stored_view`) crop views of
decoded images in Python; the trainer crops the same views inside its tf.data graph with `views.crop_view`, which stays
the definition. Here the antialiased bilinear resize is written as what it is, a separable linear map:
each output row is a weighted sum of a few input rows (then the same for columns), with the weights of
TensorFlow's ScaleAndTranslate (triangle kernel, half-pixel centres, the kernel widened by the downscale
factor, weights renormalized at the borders; where the box is no larger than the output, `patch_view`
takes TensorFlow's plain ResizeBilinear, the same map to ~1e-3 of 255). Two sparse matrix products on one core replace the op's
gathers on all of them: the crop of a ~400 px photo to 224 px costs ~0.4x TensorFlow's time
(docs/results.md "Extraction"), and equals `views.crop_view` to ~5e-3 of 255 (float32 summation order;
tests/test_numpy_views.py).

    python -c "import numpy as np; from distillery import numpy_views as v; \
print(v.crop_views(np.zeros((300, 400, 3), np.uint8), np.array([[0, 0, 1, 1]]), np.array([True]), 224).shape)"
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse

# A pixel is padded to 4 float32 channels so that it is one 16-byte element (complex128) when the image is
# transposed between the two passes: NumPy moves a 3-channel pixel value by value, ~10x slower.
_PADDED_CHANNELS = 4


@functools.lru_cache(maxsize=512)  # ~10-60 KB each
def resize_weights(input_size: int, output_size: int) -> scipy.sparse.csr_matrix:
    """[output_size, input_size] weights of an antialiased bilinear resize along one axis, as
    ScaleAndTranslate computes them (its float32 sample positions; cached: box sides repeat)."""
    scale = np.float32(output_size) / np.float32(input_size)
    inverse_scale = np.float32(1.0) / scale
    kernel_scale = max(float(inverse_scale), 1.0)  # antialiasing widens the kernel only on a downscale
    samples = ((np.arange(output_size, dtype=np.float32) + np.float32(0.5)) * inverse_scale).astype(np.float64)
    first = np.clip(np.ceil(samples - kernel_scale - 0.5), 0, input_size - 1).astype(np.int64)
    last = np.clip(np.floor(samples + kernel_scale - 0.5), 0, input_size - 1).astype(np.int64)
    span = min(2 * math.ceil(kernel_scale) + 1, input_size)
    sources = first[:, None] + np.arange(span)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs((sources + 0.5 - samples[:, None]) / kernel_scale))
    weights *= sources <= last[:, None]
    totals = weights.sum(axis=1, keepdims=True)
    weights /= np.where(totals > 0, totals, 1.0)
    return scipy.sparse.csr_matrix(
        (weights.astype(np.float32).ravel(), np.minimum(sources, input_size - 1).ravel(),
         np.arange(0, output_size * span + 1, span)), shape=(output_size, input_size))


def _transpose_pixels(pixels: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """[rows, columns * 4] float32 -> [columns, rows * 4]: a transpose that keeps each pixel's channels."""
    as_pixels = np.ascontiguousarray(pixels).view(np.complex128).reshape(rows, columns)
    return np.ascontiguousarray(as_pixels.T).view(np.float32).reshape(columns, rows * _PADDED_CHANNELS)


def resize(patch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w, 3] pixels (any real dtype) -> [height, width, 4] float32, the antialiased bilinear resize
    of `views.patch_view` before its flip and clip; the 4th channel is zero."""
    height, width = patch.shape[:2]
    out_height, out_width = size
    padded = np.zeros((height, width, _PADDED_CHANNELS), np.float32)
    for channel in range(3):  # one channel at a time: NumPy's inner loop then runs along a row
        padded[..., channel] = patch[..., channel]
    rows = resize_weights(height, out_height) @ padded.reshape(height, width * _PADDED_CHANNELS)
    columns = resize_weights(width, out_width) @ _transpose_pixels(rows, out_height, width)
    return _transpose_pixels(columns, out_width, out_height).reshape(out_height, out_width, _PADDED_CHANNELS)


def pixel_box(crop: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """`views.pixel_box` in NumPy (the same float32 products and round-half-to-even): (y0, y1, x0, x1)."""
    y_min, x_min, y_max, x_max = (np.float32(value) for value in crop)
    y0 = int(np.clip(np.round(y_min * np.float32(height)), 0, height - 1))
    x0 = int(np.clip(np.round(x_min * np.float32(width)), 0, width - 1))
    y1 = int(np.clip(np.round(y_max * np.float32(height)), y0 + 1, height))
    x1 = int(np.clip(np.round(x_max * np.float32(width)), x0 + 1, width))
    return y0, y1, x0, x1


def crop_views(image: np.ndarray, crops: np.ndarray, flips: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """All V views of one image: [H, W, 3] pixels, crops [V, 4] fractions, flips [V] ->
    [V, height, width, 3] float32 0..255, each `views.crop_view(image, crop, flip, size)`."""
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    height, width = image.shape[:2]
    result = np.empty((len(crops), size[0], size[1], 3), np.float32)
    for index, (crop, flip) in enumerate(zip(crops, flips)):
        y0, y1, x0, x1 = pixel_box(crop, height, width)
        resized = resize(image[y0:y1, x0:x1], size)
        if flip:
            resized = resized[:, ::-1]
        for channel in range(3):
            result[index, ..., channel] = resized[..., channel]
    return np.clip(result, 0.0, 255.0, out=result)
