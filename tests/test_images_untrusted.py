"""The decoder on untrusted bytes: formats outside the allow-list refused by name, oversized images refused
from their header before any pixel is decoded, ordinary images decoded exactly as Pillow decodes them.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_images_untrusted.py
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile, PsdImagePlugin

from distillery import images

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
       b"(/etc/passwd) (r) file pop\nshowpage\n%%EOF\n")
PSD = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 10, 10, 8, 3) + b"\x00" * 64


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_black_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: the rows compress to almost nothing."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def no_plugin_but_the_accepted(monkeypatch):
    """Fails the test if the EPS or PSD plugin (or Ghostscript) is ever asked to open or load a file."""
    def refuse(*args, **kwargs):
        raise AssertionError("a refused format's plugin ran")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    monkeypatch.setattr(PsdImagePlugin.PsdImageFile, "_open", refuse)


@pytest.mark.parametrize("data, name", [(EPS, "EPS"), (PSD, "PSD")], ids=["eps", "psd"])
def test_a_format_outside_the_allow_list_is_refused_by_name(no_plugin_but_the_accepted, data, name):
    with pytest.raises(images.ImageDecodeError, match=rf"image format {name} is not accepted \(only JPEG, PNG"):
        images.decode_rgb(data)


def test_unknown_bytes_are_still_not_an_image():
    with pytest.raises(images.ImageDecodeError, match=r"not an image \(unknown format\)"):
        images.decode_rgb(b"\x00\x01 definitely not a picture")


def test_a_huge_png_is_refused_from_its_header_without_decoding(monkeypatch):
    data = huge_black_png(10_000)
    assert len(data) < 100_000  # 10^8 pixels in a few kilobytes
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the image was decoded"))
    start = time.monotonic()
    with pytest.raises(images.ImageDecodeError, match=r"10000x10000 pixels is too large to decode "
                                                      r"\(more than 90000000 pixels\)"):
        images.decode_rgb(data, max_pixels=90_000_000)
    assert time.monotonic() - start < 1.0


def test_the_jpeg_limit_is_on_the_draft_size_it_decodes_at():
    photo = encode(np.full((3000, 4000, 3), 120, np.uint8), "JPEG", quality=50)
    with pytest.raises(images.ImageDecodeError, match=r"4000x3000 pixels is too large"):
        images.decode_rgb(photo, max_pixels=10_000_000)
    assert images.decode_rgb(photo, min_side=1000, max_pixels=10_000_000).shape == (1500, 2000, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_accepted_formats_decode_exactly_as_pillow_does(fmt):
    pixels = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = encode(pixels if fmt != "GIF" else pixels // 64 * 64, fmt)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(images.decode_rgb(data), expected)
    np.testing.assert_array_equal(images.decode_rgb(data, max_pixels=37 * 53), expected)
    with pytest.raises(images.ImageDecodeError, match="too large"):
        images.decode_rgb(data, max_pixels=37 * 53 - 1)


def test_pillow_bomb_check_follows_the_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    images.use_pixel_limit(1000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(images.ImageDecodeError, match="too large"):  # Pillow itself refuses above twice the limit
        images.decode_rgb(encode(np.zeros((50, 50, 3), np.uint8), "PNG"), max_pixels=10_000)
