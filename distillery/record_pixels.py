"""A soft-label record as pixels: its image decoded, and a view of it cropped, flipped and resized.

The one definition of what a model is fed from a record, for the trainer's tf.data pipeline (the graph
functions, `*_tensor`) and for int8 calibration and the benchmark's evaluation (the NumPy functions, which
run the same graph decoder, compiled once, and crop with `numpy_views`, so all three see the same
pixels, a stored view to ~5e-3 of 255):

- the image: the record's stored bytes, else the original file at its image/path, decoded with
  TensorFlow ops only (no Python in the input pipeline, so decoding scales with the cores, not the GIL):
  JPEG with the accurate integer DCT, PNG by its header (16-bit grey scaled, alpha composited on white),
  still WebP (alpha composited on white), GIF (first frame) and 24/32-bit BMP via tf.io.decode_image;
- a stored view: `distillery.views.crop_view` of the view's crop box and flip at a size;
- the evaluation view: `distillery.views.eval_view` (the centre crop, not flipped);
- channels: 3 (RGB), or 1 (ITU-R 601 luma, as tf.image.rgb_to_grayscale) for a grayscale model.

Against the extraction's decoder (`distillery.images.decode_rgb`, PIL: the pixels the teacher saw) the
result is the same to the bit for what extraction stores (JPEG re-encodes) and for JPEG (RGB, grey,
progressive, CMYK), PNG (RGB, grey, 1/2/4/8/16-bit, palette with or without transparency, grey + alpha,
RGBA, 16-bit RGBA), GIF without transparency, 24-bit BMP and still WebP (with or without alpha)
originals. It differs, pinned by tests/test_record_pixels.py, for originals that are:

- GIF with a transparent colour: TensorFlow gives black where PIL composites on white;
- TIFF, animated WebP, BMP with fewer than 24 bits per pixel, or any other format: not decoded
  (`image_format_tensor` says UNSUPPORTED; the trainer skips the record as undecodable_image), where
  PIL decodes them (TIFF; the first frame of an animated WebP; palette BMP);
- larger than the extraction's pixel limit (--max_image_pixels): decoded anyway (no pixel limit here;
  the extraction refused such images before writing their records).

`image_format_tensor` reads only the first bytes and never raises, so a pipeline can flag an image of no
known format without decoding it; `decode_image_tensor` raises (InvalidArgumentError) on bytes that do not
decode, which a pipeline catches with `ignore_errors` (trainer/data.py).

The NumPy functions crop a stored view with `numpy_views.crop_views` (`views.crop_view`'s pixels to ~5e-3
of 255) and evaluation views with one compiled graph call (`views.compiled_eval_views`) instead of a
dozen eager ops per image.

    python -c "from distillery import records, record_pixels; \
r = next(iter(records.read_records('runs/demo/soft_labels/eval-*'))); print(record_pixels.stored_view(r, 0, 32).shape)"
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from distillery import images, numpy_views, records, views

CHANNELS = (1, 3)
# What image_format_tensor returns: the decoder a file's first bytes call for (UNSUPPORTED: none).
UNSUPPORTED, JPEG, PNG, GIF, BMP, WEBP, WEBP_ALPHA = range(7)
FORMAT_NAMES = ("unsupported", "JPEG", "PNG", "GIF", "BMP", "WebP", "WebP with alpha")
_HEADER_BYTES = 32
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY, _PNG_PALETTE, _PNG_GREY_ALPHA, _PNG_RGBA = 0, 3, 4, 6
_WEBP_ANIMATION, _WEBP_EXTENDED_ALPHA = 0x02, 0x10  # VP8X flags
_VP8L_SIGNATURE = 0x2F
JPEG_WINDOW_MARGIN = 16  # pixels decoded past a view's box (decode_view_tensor); 8 was already exact
_JPEG_END = b"\xff\xd9"  # the end-of-image marker


class UnsupportedChannelsError(ValueError):
    """A model input that is neither RGB nor grey; the message says which channel counts work."""


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ------------------------------------------------------------------------------------ graph (tf.data)

def _header(data: tf.Tensor) -> tf.Tensor:
    """The first _HEADER_BYTES bytes as [..., _HEADER_BYTES] uint8, zero-padded when the data is shorter."""
    return tf.io.decode_raw(tf.strings.substr(data, 0, _HEADER_BYTES), tf.uint8, fixed_length=_HEADER_BYTES)


def _starts(header: tf.Tensor, offset: int, signature: bytes) -> tf.Tensor:
    expected = tf.constant(list(signature), tf.uint8)
    return tf.reduce_all(tf.equal(header[..., offset:offset + len(signature)], expected), axis=-1)


def _flag(header: tf.Tensor, offset: int, bit: int) -> tf.Tensor:
    return tf.not_equal(tf.bitwise.bitwise_and(header[..., offset], bit), 0)


def image_format_tensor(data: tf.Tensor) -> tf.Tensor:
    """The int32 format code (JPEG, PNG, ... or UNSUPPORTED) of image bytes, from their first bytes only;
    `data` may be a scalar or a batch of strings (the codes then have its shape).

    Never raises: empty, short or garbage bytes are UNSUPPORTED, as are TIFF, animated WebP and BMP of
    fewer than 24 bits per pixel (which TensorFlow decodes wrongly or not at all).
    """
    header = _header(data)
    bmp_bits = tf.cast(header[..., 28], tf.int32) + tf.cast(header[..., 29], tf.int32) * 256
    webp = _starts(header, 0, b"RIFF") & _starts(header, 8, b"WEBP")
    extended = _starts(header, 12, b"VP8X")
    lossless = _starts(header, 12, b"VP8L") & tf.equal(header[..., 20], _VP8L_SIGNATURE)
    webp_alpha = (extended & _flag(header, 20, _WEBP_EXTENDED_ALPHA)) | (lossless & _flag(header, 24, 0x10))
    still_webp = webp & ~(extended & _flag(header, 20, _WEBP_ANIMATION)) & (extended | lossless | _starts(header, 12, b"VP8 "))
    choices = [  # first match wins
        (_starts(header, 0, b"\xff\xd8\xff"), JPEG),
        (_starts(header, 0, _PNG_SIGNATURE), PNG),
        (_starts(header, 0, b"GIF8"), GIF),
        (_starts(header, 0, b"BM") & ((bmp_bits == 24) | (bmp_bits == 32)), BMP),
        (still_webp & webp_alpha, WEBP_ALPHA),
        (still_webp, WEBP),
    ]
    code = tf.fill(tf.shape(data), tf.constant(UNSUPPORTED, tf.int32))
    for condition, value in reversed(choices):
        code = tf.where(condition, tf.constant(value, tf.int32), code)
    return code


def _on_white(rgba: tf.Tensor) -> tf.Tensor:
    """[H, W, 4] uint8 RGBA composited on opaque white as [H, W, 3] uint8: exactly PIL's alpha_composite
    (round(c * a / 255 + 255 * (1 - a / 255)), every (c, a) checked in tests/test_record_pixels.py)."""
    colour = tf.cast(rgba[..., :3], tf.int32)
    alpha = tf.cast(rgba[..., 3:], tf.int32)
    return tf.cast((colour * alpha + 255 * (255 - alpha) + 127) // 255, tf.uint8)


def _decode_png(data: tf.Tensor, header: tf.Tensor) -> tf.Tensor:
    """A PNG the way extraction's decode_rgb converts it: 16-bit grey scaled to 8 bits (PIL's I;16 path),
    palette / grey + alpha / RGBA composited on white, grey / RGB (any depth: the high byte) as they are."""
    depth, colour = tf.cast(header[24], tf.int32), tf.cast(header[25], tf.int32)

    def grey_16():
        grey = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16), tf.int32)
        return tf.tile(tf.cast((grey * 255 + 32767) // 65535, tf.uint8), [1, 1, 3])

    with_alpha = (tf.equal(colour, _PNG_PALETTE) | tf.equal(colour, _PNG_GREY_ALPHA) | tf.equal(colour, _PNG_RGBA))
    branch = tf.where(tf.equal(colour, _PNG_GREY) & tf.equal(depth, 16), 0, tf.where(with_alpha, 1, 2))
    return tf.switch_case(branch, [grey_16, lambda: _on_white(tf.io.decode_png(data, channels=4)),
                                   lambda: tf.io.decode_png(data, channels=3)])


def _unsupported(data: tf.Tensor) -> tf.Tensor:
    check = tf.debugging.Assert(False, ["not an image the trainer decodes (JPEG, PNG, GIF, 24/32-bit BMP or still "
                                        "WebP); first bytes:", _header(data)[:8]], summarize=8)
    with tf.control_dependencies([check]):
        return tf.zeros([1, 1, 3], tf.uint8)


def decode_image_tensor(data: tf.Tensor, image_format: tf.Tensor | None = None) -> tf.Tensor:
    """[H, W, 3] uint8 RGB of image bytes in the graph (module docstring: formats and where they differ
    from the extraction's decoder).

    Args:
      data: the encoded image, a scalar string.
      image_format: `image_format_tensor(data)`, when the caller has it already.

    Raises:
      tf.errors.InvalidArgumentError (when run): bytes of no supported format, or that do not decode.
    """
    image_format = image_format_tensor(data) if image_format is None else image_format

    def decode_image():
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    def decode_jpeg():
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    def other_formats():
        branches = [lambda: _unsupported(data), decode_jpeg, lambda: _decode_png(data, _header(data)),
                    decode_image, decode_image, decode_image, lambda: _on_white(tf.io.decode_webp(data, channels=4)[0])]
        return tf.switch_case(image_format, branches)

    # JPEG (what extraction stores) on the shorter way: one two-way cond instead of the seven-way switch.
    image = tf.cond(tf.equal(image_format, JPEG), decode_jpeg, other_formats)
    image.set_shape([None, None, 3])
    return image


def image_bytes_tensor(encoded: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    """A record's image bytes in the graph: its stored bytes, else the file at `path` (tf.io.read_file:
    local or gs://; raises NotFoundError when run on a missing file)."""
    return tf.cond(tf.strings.length(encoded) > 0, lambda: encoded, lambda: tf.io.read_file(path))


def decode_tensor(encoded: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    """[H, W, 3] uint8 RGB of a record in the graph: its image bytes, or the file at `path` when the bytes
    are empty (`image_bytes_tensor`, then `decode_image_tensor`); the pixels of `decode` for the same record."""
    return decode_image_tensor(image_bytes_tensor(encoded, path))


def view_tensor(image: tf.Tensor, crop: tf.Tensor, flip: tf.Tensor, size: int | Sequence[int]) -> tf.Tensor:
    """A stored view (crop box, flip) of a decoded image in the graph: [h, w, 3] float32 0..255."""
    return views.crop_view(image, crop, flip, _size(size))


def decode_view_tensor(data: tf.Tensor, image_format: tf.Tensor, crop: tf.Tensor, flip: tf.Tensor,
                       size: int | Sequence[int]) -> tf.Tensor:
    """`view_tensor(decode_image_tensor(data, image_format), crop, flip, size)`, the same pixels, decoding
    of a JPEG only the window the view needs (tf.io.decode_and_crop_jpeg: libjpeg skips the rest; a
    RandomResizedCrop box covers half the image on average).

    The window reaches JPEG_WINDOW_MARGIN pixels past the box on each side: at a window's edge libjpeg
    upsamples the chroma from the window alone, which changes the edge pixels by up to 3 of 255 on 4:2:0
    images; past the margin the pixels are those of the whole image's decode, to the bit
    (tests/test_record_pixels.py). A JPEG that does not end with its end-of-image marker (cut short, or
    with bytes after it) is decoded whole, so that one cut short fails as it would whole.

    Raises:
      tf.errors.InvalidArgumentError (when run): as `decode_image_tensor`.
    """
    return _decode_box_view(data, image_format, lambda height, width: crop, flip, size)


def decode_eval_view_tensor(data: tf.Tensor, image_format: tf.Tensor, size: int | Sequence[int]) -> tf.Tensor:
    """`eval_view_tensor(decode_image_tensor(data, image_format), size)`, the same pixels, decoding of a JPEG
    only the centre crop's window (as `decode_view_tensor`)."""
    return _decode_box_view(data, image_format, views.centre_crop_tensor, False, size)


def _decode_box_view(data: tf.Tensor, image_format: tf.Tensor, box: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
                     flip, size: int | Sequence[int]) -> tf.Tensor:
    """The view of crop box `box(height, width)` (fractions): a JPEG decoded in the box's window plus
    JPEG_WINDOW_MARGIN, any other format decoded whole."""
    def jpeg_view():
        shape = tf.io.extract_jpeg_shape(data)
        height, width = shape[0], shape[1]
        y0, y1, x0, x1 = views.pixel_box(box(height, width), height, width)
        top, left = tf.maximum(y0 - JPEG_WINDOW_MARGIN, 0), tf.maximum(x0 - JPEG_WINDOW_MARGIN, 0)
        bottom, right = tf.minimum(y1 + JPEG_WINDOW_MARGIN, height), tf.minimum(x1 + JPEG_WINDOW_MARGIN, width)
        window = tf.io.decode_and_crop_jpeg(data, tf.stack([top, left, bottom - top, right - left]), channels=3,
                                            dct_method="INTEGER_ACCURATE")
        return views.patch_view(window[y0 - top:y1 - top, x0 - left:x1 - left, :], flip, _size(size))

    def whole_image_view():
        image = decode_image_tensor(data, image_format)
        shape = tf.shape(image)
        return views.crop_view(image, box(shape[0], shape[1]), flip, _size(size))

    # Only a JPEG that ends with its end-of-image marker is decoded in a window: libjpeg stops at the
    # window's last row, so a file cut short below it would decode there and fail as a whole.
    last_bytes = tf.strings.substr(data, tf.maximum(tf.strings.length(data) - 2, 0), 2)  # never out of range
    complete_jpeg = tf.equal(image_format, JPEG) & tf.equal(last_bytes, _JPEG_END)
    view = tf.cond(complete_jpeg, jpeg_view, whole_image_view)
    view.set_shape([*_size(size), 3])
    return view


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


@functools.cache
def _compiled_decode():
    """`decode_image_tensor` as one graph call per image (cached per process; eagerly it is ~30 ops)."""
    return tf.function(decode_image_tensor, input_signature=[tf.TensorSpec([], tf.string)])


def decode_bytes(data: bytes) -> np.ndarray:
    """[H, W, 3] uint8 RGB of image bytes: `decode_image_tensor`, the trainer's decoder, run once.

    Raises:
      images.ImageDecodeError: empty bytes, or bytes that do not decode (the message says why).
    """
    if not data:
        raise images.ImageDecodeError("empty file")
    try:
        return _compiled_decode()(tf.constant(data)).numpy()
    except tf.errors.OpError as error:
        raise images.ImageDecodeError(f"cannot decode image: {_reason(error.message)}") from None


def _reason(message: str) -> str:
    """The decoder's own words from a graph execution error (the line before its `[[{{node ...}}]]`)."""
    lines = [line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith("[[")]
    reason = lines[-1] if lines else message
    if reason.startswith("assertion failed: "):
        reason = reason[len("assertion failed: "):].replace("] [", " ").strip("[]")
    return reason


def decode(record: records.SoftLabelRecord) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a record: its stored image, else the file at its image_path, decoded exactly
    as the trainer's pipeline decodes it (`decode_bytes`).

    Raises:
      images.ImageDecodeError: when the image does not decode (the message says why).
    """
    return decode_bytes(image_bytes(record))


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
    that view (`decode_tensor` then `view_tensor`), to float32 rounding (~5e-3 of 255: the crop is
    `numpy_views.crop_views`).

    Raises:
      images.ImageDecodeError: when the image does not decode.
      UnsupportedChannelsError: channels not 1 or 3.
    """
    pixels = numpy_views.crop_views(decode(record), record.crops[view:view + 1], record.flips[view:view + 1],
                                    _size(size))[0]
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
