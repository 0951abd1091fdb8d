"""A soft-label record as pixels: its image decoded, and a view of it cropped, flipped and resized.

The one definition of what a model is fed from a record, for the trainer's tf.data pipeline (the graph
functions, `*_tensor`) and for int8 calibration and the benchmark's evaluation (the NumPy functions):

- the image: the record's stored bytes, else the original file at its image/path, decoded the way
  extraction decodes (`distillery.images.decode_rgb`). The graph version decodes JPEGs and 8-bit
  grey or RGB PNGs (what extraction and the benchmarks store) with TensorFlow's decoders, which give
  decode_rgb's pixels exactly for them (tests/test_record_pixels.py), and everything else with
  decode_rgb itself, so a PNG with alpha or 16 bits comes out as extraction saw it;
- a stored view: `distillery.views.crop_view` of the view's crop box and flip at a size;
- the evaluation view: `distillery.views.eval_view` (the centre crop, not flipped);
- channels: 3 (RGB), or 1 (ITU-R 601 luma, as tf.image.rgb_to_grayscale) for a grayscale model.

The NumPy functions run the same view functions as one compiled graph call (`views.compiled_crop_views`,
`views.compiled_eval_views`) instead of a dozen eager ops per image.

    python -c "from distillery import records, record_pixels; \
r = next(iter(records.read_records('runs/demo/soft_labels/eval-*'))); print(record_pixels.stored_view(r, 0, 32).shape)"
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from distillery import images, records, views

CHANNELS = (1, 3)
_PNG_SIGNATURE = (0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A)
_PNG_HEADER_BYTES = 26  # signature, IHDR length and type, width, height, bit depth, colour type
_PNG_GREY, _PNG_RGB = 0, 2


class UnsupportedChannelsError(ValueError):
    """A model input that is neither RGB nor grey; the message says which channel counts work."""


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ------------------------------------------------------------------------------------ graph (tf.data)

def _decode_rgb_bytes(data: bytes | np.ndarray) -> np.ndarray:
    # tf.numpy_function hands a scalar string over as bytes inside a graph (tf.data), but as a 0-d
    # object array holding the bytes when called eagerly.
    return images.decode_rgb(data.item() if isinstance(data, np.ndarray) else data)


def _decode_rgb_tensor(data: tf.Tensor) -> tf.Tensor:
    image = tf.numpy_function(_decode_rgb_bytes, [data], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image


def _is_plain_png(encoded: tf.Tensor) -> tf.Tensor:
    """Whether the bytes are an 8-bit grey or RGB PNG (no alpha channel, no palette)."""
    header = tf.io.decode_raw(tf.strings.substr(encoded, 0, _PNG_HEADER_BYTES), tf.uint8,
                              fixed_length=_PNG_HEADER_BYTES)  # zero-padded when shorter
    signature = tf.reduce_all(tf.equal(header[:8], tf.constant(_PNG_SIGNATURE, tf.uint8)))
    colour = header[25]
    return signature & tf.equal(header[24], 8) & (tf.equal(colour, _PNG_GREY) | tf.equal(colour, _PNG_RGB))


def decode_tensor(encoded: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    """[H, W, 3] uint8 RGB of a record in the graph: its image bytes, or the file at `path` when the bytes
    are empty; the pixels of `decode` for the same record.

    JPEGs are decoded with the accurate integer DCT, which gives exactly the pixels of PIL (TensorFlow's
    default fast DCT does not); 8-bit grey / RGB PNGs with tf.io.decode_png.
    Anything else, and every original file (CMYK, alpha, 16-bit, TIFF, ...), goes through extraction's
    decoder, `distillery.images.decode_rgb`, so the student sees the pixels the teacher saw.
    """
    def not_jpeg():
        return tf.cond(_is_plain_png(encoded), lambda: tf.io.decode_png(encoded, channels=3),
                       lambda: _decode_rgb_tensor(encoded))

    def stored():
        return tf.cond(tf.io.is_jpeg(encoded),
                       lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"), not_jpeg)

    image = tf.cond(tf.strings.length(encoded) > 0, stored, lambda: _decode_rgb_tensor(tf.io.read_file(path)))
    image.set_shape([None, None, 3])
    return image


def view_tensor(image: tf.Tensor, crop: tf.Tensor, flip: tf.Tensor, size: int | Sequence[int]) -> tf.Tensor:
    """A stored view (crop box, flip) of a decoded image in the graph: [h, w, 3] float32 0..255."""
    return views.crop_view(image, crop, flip, _size(size))


def eval_view_tensor(image: tf.Tensor, size: int | Sequence[int]) -> tf.Tensor:
    """The evaluation view (centre crop, not flipped) of a decoded image in the graph: [h, w, 3] float32."""
    return views.eval_view(image, _size(size))


# ------------------------------------------------------------------------------- NumPy (calibration, eval)

def image_bytes(record: records.SoftLabelRecord) -> bytes:
    """The record's stored image bytes, else the bytes of the file at its image_path (local or gs://)."""
    if not record.encoded_image and record.image_path:
        with tf.io.gfile.GFile(record.image_path, "rb") as handle:
            return handle.read()
    return record.encoded_image


def decode(record: records.SoftLabelRecord) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a record: its stored image, else the file at its image_path.

    Raises:
      images.ImageDecodeError: when the image does not decode (the message says why).
    """
    return images.decode_rgb(image_bytes(record))


def decode_or_none(record: records.SoftLabelRecord) -> np.ndarray | None:
    """`decode`, or None (logged with the record's id and the reason) when the image does not decode."""
    try:
        return decode(record)
    except images.ImageDecodeError as error:
        logging.warning("record %s: image skipped: %s", record.image_id, error)
        return None


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """[..., 3] RGB pixels as [..., channels] float32: 3 unchanged, 1 the ITU-R 601 luma.

    Raises:
      UnsupportedChannelsError: for any other channel count.
    """
    if channels == 1:
        pixels = tf.image.rgb_to_grayscale(pixels).numpy()
    elif channels not in CHANNELS:
        raise UnsupportedChannelsError(f"models with {channels} input channels are not supported (1 or 3)")
    return pixels.astype(np.float32)


def stored_view(record: records.SoftLabelRecord, view: int, size: int | Sequence[int], channels: int = 3) -> np.ndarray:
    """Stored view `view` of a record as [h, w, channels] float32 0..255: the pixels the trainer feeds for
    that view (`decode_tensor` then `view_tensor`).

    Raises:
      images.ImageDecodeError: when the image does not decode.
      UnsupportedChannelsError: channels not 1 or 3.
    """
    crop_all = views.compiled_crop_views(_size(size))
    pixels = crop_all(decode(record), record.crops[view:view + 1].astype(np.float32),
                      record.flips[view:view + 1].astype(bool)).numpy()[0]
    return to_channels(pixels, channels)


def eval_views(rgb_images: Sequence[np.ndarray], size: int | Sequence[int], channels: int = 3) -> list[np.ndarray]:
    """The evaluation views of decoded [H, W, 3] uint8 images as [h, w, channels] float32, each equal to
    `eval_view` of its record, with one graph call per distinct image shape instead of one per image."""
    eval_all = views.compiled_eval_views(_size(size))
    by_shape: dict[tuple, list[int]] = {}
    for index, image in enumerate(rgb_images):
        by_shape.setdefault(image.shape, []).append(index)
    result: list[np.ndarray | None] = [None] * len(rgb_images)
    for indices in by_shape.values():
        batch = eval_all(np.stack([rgb_images[index] for index in indices])).numpy()
        for index, pixels in zip(indices, batch):
            result[index] = to_channels(pixels, channels)
    return result


def eval_view(record: records.SoftLabelRecord, size: int | Sequence[int], channels: int = 3) -> np.ndarray:
    """The evaluation view of a record as [h, w, channels] float32 0..255: what the trainer evaluates on.

    Raises:
      images.ImageDecodeError: when the image does not decode.
      UnsupportedChannelsError: channels not 1 or 3.
    """
    return eval_views([decode(record)], size, channels)[0]
