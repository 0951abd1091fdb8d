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


def _save(pil: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, **options)
    return buffer.getvalue()


def _encoded(kind: str, seed: int = 0) -> bytes:
    """Bytes of one image in the format `kind`: what extraction stores (JPEG), what the benchmarks store
    (RGB and grey PNG), and originals extraction accepts (alpha, palette, 16-bit, CMYK, GIF, BMP, TIFF, WebP)."""
    rgb = _image(seed)
    if kind == "jpeg-extraction":
        return images.encode_bounded(rgb, max_side=24)
    rng = np.random.default_rng(seed + 100)
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    wide = rng.integers(0, 65536, rgb.shape, dtype=np.uint16)  # random low bytes: the high byte and scaling differ
    if kind in ("png-rgb-16bit", "png-rgba-16bit", "png-grey-alpha-16bit"):
        channels = {"png-rgb-16bit": wide, "png-rgba-16bit": np.dstack([wide, wide[..., :1]]),
                    "png-grey-alpha-16bit": wide[..., :2]}[kind]
        return tf.io.encode_png(tf.constant(channels)).numpy()
    if kind == "webp-animated":
        return _save(Image.fromarray(rgb), format="WEBP", save_all=True, lossless=True,
                     append_images=[Image.fromarray(_image(seed + 1)), Image.fromarray(_image(seed + 2))])
    palette = Image.fromarray(rgb).convert("P")
    transparent = int(np.asarray(palette)[0, 0])  # the colour of the top-left pixel is the transparent one
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    pil, save = {
        "jpeg": (Image.fromarray(rgb), {"format": "JPEG", "quality": 90}),
        "jpeg-progressive": (Image.fromarray(rgb), {"format": "JPEG", "quality": 90, "progressive": True}),
        "jpeg-grey": (Image.fromarray(rgb).convert("L"), {"format": "JPEG"}),
        "jpeg-cmyk": (Image.fromarray(rgb).convert("CMYK"), {"format": "JPEG"}),
        "png": (Image.fromarray(rgb), {"format": "PNG"}),
        "png-grey": (Image.fromarray(rgb[..., 0]), {"format": "PNG"}),
        "png-grey-2bit": (Image.fromarray((rgb[..., 0] // 64 * 85).astype(np.uint8)), {"format": "PNG", "bits": 2}),
        "png-1bit": (Image.fromarray(rgb[..., 0] > 127), {"format": "PNG"}),
        "png-rgba": (rgba, {"format": "PNG"}),
        "png-grey-alpha": (rgba.convert("LA"), {"format": "PNG"}),
        "png-palette": (palette, {"format": "PNG"}),
        "png-palette-alpha": (rgba.convert("P"), {"format": "PNG"}),
        "png-palette-transparent": (palette, {"format": "PNG", "transparency": transparent}),
        "png-16bit": (Image.fromarray(rgb[..., 0].astype(np.uint16) * 257 + 3).convert("I;16"), {"format": "PNG"}),
        "png-grey-16bit-random": (Image.fromarray(wide[..., 0]).convert("I;16"), {"format": "PNG"}),
        "gif": (palette, {"format": "GIF"}),
        "gif-transparent": (palette, {"format": "GIF", "transparency": transparent}),
        "bmp": (Image.fromarray(rgb), {"format": "BMP"}),
        "bmp-palette": (palette, {"format": "BMP"}),
        "tiff": (Image.fromarray(rgb), {"format": "TIFF"}),
        "webp": (Image.fromarray(rgb), {"format": "WEBP", "quality": 80}),
        "webp-lossless": (Image.fromarray(rgb), {"format": "WEBP", "lossless": True}),
        "webp-alpha": (rgba, {"format": "WEBP", "quality": 80}),
        "webp-lossless-alpha": (rgba, {"format": "WEBP", "lossless": True}),
    }[kind]
    return _save(pil, **save)


def _encoded_png(rgb: np.ndarray) -> bytes:
    return _save(Image.fromarray(rgb), format="PNG")


# The trainer's TensorFlow decoder gives extraction's (PIL's) pixels to the bit for these ...
KINDS = ["jpeg", "jpeg-extraction", "jpeg-progressive", "jpeg-grey", "jpeg-cmyk", "png", "png-grey", "png-grey-2bit",
         "png-1bit", "png-rgba", "png-grey-alpha", "png-palette", "png-palette-alpha", "png-palette-transparent",
         "png-16bit", "png-grey-16bit-random", "png-rgb-16bit", "png-rgba-16bit", "png-grey-alpha-16bit", "gif", "bmp",
         "webp", "webp-lossless", "webp-alpha", "webp-lossless-alpha"]
# ... and does not decode these, which PIL does (record_pixels' docstring); gif-transparent differs in pixels.
UNSUPPORTED_KINDS = ["tiff", "bmp-palette", "webp-animated"]


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
    assert int(record_pixels.image_format_tensor(encoded)) != record_pixels.UNSUPPORTED
    for record in (_record(0, encoded=encoded), _record(0, image_path=str(path))):
        np.testing.assert_array_equal(record_pixels.decode(record), expected)
        np.testing.assert_array_equal(
            record_pixels.decode_tensor(tf.constant(record.encoded_image), tf.constant(record.image_path)).numpy(),
            expected)
        mapped = tf.data.Dataset.from_tensors((record.encoded_image, record.image_path)).map(
            record_pixels.decode_tensor)
        np.testing.assert_array_equal(next(iter(mapped)).numpy(), expected)


def _photo_like(height: int, width: int, seed: int = 7) -> np.ndarray:
    smooth = np.cumsum(np.cumsum(np.random.default_rng(seed).integers(-9, 10, (height, width, 3)), axis=0), axis=1)
    return ((smooth - smooth.min()) * 255 // max(1, np.ptp(smooth))).astype(np.uint8)


@pytest.mark.parametrize("options", [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2},
                                     {"subsampling": "4:1:1"}, {"progressive": True, "quality": 60}, {"mode": "L"},
                                     {"mode": "CMYK"}, {"side": 8}, {"format": "PNG"}])
def test_a_view_decoded_in_its_jpeg_window_has_the_pixels_of_the_whole_decode(options):
    """decode_view_tensor / decode_eval_view_tensor decode a JPEG only in the view's window (plus a margin
    for the chroma upsampling at its edges): the same pixels, to the bit, as decoding the whole image, for
    4:4:4, 4:2:2, 4:2:0 and 4:1:1 chroma, progressive, grey and CMYK JPEGs, an image smaller than the
    margin, boxes at the edges and a box of one pixel; other formats take the whole decode."""
    options = dict(options)
    mode, image_format, side = options.pop("mode", "RGB"), options.pop("format", "JPEG"), options.pop("side", None)
    rgb = _photo_like(side or 157, side or 203)
    encoded = tf.constant(_save(Image.fromarray(rgb).convert(mode), format=image_format, **options))
    image_format = record_pixels.image_format_tensor(encoded)
    image = record_pixels.decode_image_tensor(encoded, image_format)
    corners = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.01, 0.01], [0.99, 0.99, 1.0, 1.0], [0.31, 0.0, 0.77, 0.4],
               [0.5, 0.5, 0.5, 0.5]]
    rng = np.random.default_rng(8)
    random = [sorted(rng.uniform(0, 1, 2)) for _ in range(12)]
    boxes = corners + [[a[0], b[0], a[1], b[1]] for a, b in zip(random[::2], random[1::2])]
    for index, box in enumerate(boxes):
        crop, flip = tf.constant(box, tf.float32), tf.constant(index % 2 == 1)
        for size in (24, (160, 96)):  # downscales and upscales
            np.testing.assert_array_equal(record_pixels.decode_view_tensor(encoded, image_format, crop, flip, size),
                                          record_pixels.view_tensor(image, crop, flip, size), err_msg=f"{box} {size}")
    np.testing.assert_array_equal(record_pixels.decode_eval_view_tensor(encoded, image_format, 48),
                                  record_pixels.eval_view_tensor(image, 48))


def test_a_jpeg_cut_short_fails_in_its_window_as_it_fails_whole():
    """libjpeg stops at a window's last row, so a JPEG cut below a view's box would decode in the window;
    decode_view_tensor decodes a JPEG without its end-of-image marker whole, so it fails the same way
    (the trainer counts it as undecodable_image), and one with bytes after the marker gives the same pixels."""
    encoded = tf.io.encode_jpeg(_photo_like(256, 256)).numpy()
    top_box, flip = tf.constant([0.0, 0.0, 0.2, 0.2]), tf.constant(False)
    cut = tf.constant(encoded[:int(len(encoded) * 0.9)])
    with pytest.raises(tf.errors.InvalidArgumentError):
        record_pixels.decode_image_tensor(cut)
    window = [0, 0, 80, 80]  # what the window decode would have read: it succeeds, hence the check
    assert tf.io.decode_and_crop_jpeg(cut, window, channels=3).shape == (80, 80, 3)
    with pytest.raises(tf.errors.InvalidArgumentError):
        record_pixels.decode_view_tensor(cut, record_pixels.image_format_tensor(cut), top_box, flip, 16)
    trailing = tf.constant(encoded + b"trailing bytes")
    np.testing.assert_array_equal(
        record_pixels.decode_view_tensor(trailing, record_pixels.image_format_tensor(trailing), top_box, flip, 16),
        record_pixels.view_tensor(record_pixels.decode_image_tensor(tf.constant(encoded)), top_box, flip, 16))


def test_a_transparent_gif_colour_is_black_in_the_trainer_and_white_in_extraction():
    """The one decodable original whose pixels differ: TensorFlow's GIF decoder fills the transparent colour
    with black, PIL (decode_rgb) composites it on white; every other pixel is the same."""
    encoded = _encoded("gif-transparent")
    extraction, trainer = images.decode_rgb(encoded), record_pixels.decode_bytes(encoded)
    indices = np.asarray(Image.open(io.BytesIO(encoded)))
    transparent = indices == indices[0, 0]
    assert 0 < transparent.sum() < transparent.size
    np.testing.assert_array_equal(extraction[transparent], 255)
    np.testing.assert_array_equal(trainer[transparent], 0)
    np.testing.assert_array_equal(trainer[~transparent], extraction[~transparent])


@pytest.mark.parametrize("kind", UNSUPPORTED_KINDS)
def test_formats_tensorflow_does_not_decode_are_refused_from_their_header(kind):
    """TIFF, palette BMP (which tf.io.decode_bmp reads as grey indices) and animated WebP (whose decoder
    corrupts the heap in TF 2.21) are refused from their first bytes, without a decoder running; PIL
    decodes them."""
    encoded = _encoded(kind)
    assert images.decode_rgb(encoded).shape == (30, 34, 3)
    assert int(record_pixels.image_format_tensor(encoded)) == record_pixels.UNSUPPORTED
    with pytest.raises(images.ImageDecodeError, match="cannot decode image: not an image the trainer decodes"):
        record_pixels.decode_bytes(encoded)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not an image the trainer decodes"):
        record_pixels.decode_tensor(tf.constant(encoded), tf.constant(""))


def test_image_format_reads_headers_and_never_raises():
    codes = {kind: int(record_pixels.image_format_tensor(_encoded(kind)))
             for kind in ("jpeg", "png", "gif", "bmp", "webp", "webp-lossless", "webp-alpha", "webp-lossless-alpha")}
    assert codes == {"jpeg": record_pixels.JPEG, "png": record_pixels.PNG, "gif": record_pixels.GIF,
                     "bmp": record_pixels.BMP, "webp": record_pixels.WEBP, "webp-lossless": record_pixels.WEBP,
                     "webp-alpha": record_pixels.WEBP_ALPHA, "webp-lossless-alpha": record_pixels.WEBP_ALPHA}
    for garbage in (b"", b"\xff", b"not an image at all", bytes(range(256)), b"RIFF\x00\x00\x00\x00WAVEfmt "):
        assert int(record_pixels.image_format_tensor(garbage)) == record_pixels.UNSUPPORTED


def test_alpha_is_composited_on_white_exactly_as_pil_does_for_every_value():
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([colour, 255 - colour, colour // 2, alpha], axis=-1).astype(np.uint8)  # every (colour, alpha)
    encoded = _save(Image.fromarray(rgba, "RGBA"), format="PNG")
    np.testing.assert_array_equal(record_pixels.decode_bytes(encoded), images.decode_rgb(encoded))


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
    dataset = data.make_dataset(pattern, SIZE, 4, training=True, seed=1, shuffle_buffer=64, teacher_image_size=TEACHER_SIZE)
    seen = set()
    for batch, targets in dataset.take(8):  # 32 examples: four passes over the 8 records
        for pixels, teacher_pixels, label in zip(batch.numpy(), targets["teacher_images"].numpy(),
                                                 targets["labels"].numpy()):
            record = by_label[int(label)]
            errors = [np.abs(pixels - record_pixels.stored_view(record, view, SIZE)).max() for view in range(2)]
            view = int(np.argmin(errors))
            assert errors[view] < 1e-2, (int(label), errors)  # numpy_views: crop_view's pixels to float rounding
            assert errors[1 - view] > 10  # the two stored views differ: the match says which one was fed
            np.testing.assert_allclose(teacher_pixels, record_pixels.stored_view(record, view, TEACHER_SIZE), atol=1e-2)
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
