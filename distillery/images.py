"""Decoding any image file into 8-bit RGB, and re-encoding it at a bounded size.

One odd image must never fail a batch: decoding happens one image at a time, before batching, and
every failure becomes an `ImageDecodeError` whose message is the dead-letter reason. Grayscale, CMYK,
palette, alpha and 16-bit images all come out as uint8 RGB. Very large JPEGs are decoded at a reduced
DCT scale (PIL's draft mode), so a 12000x9000 photo never needs its full-size buffer.

Inputs are untrusted: Pillow is asked to recognize only `ACCEPTED_FORMATS` (an EPS, PSD, PDF ... file
is refused by name, without running Ghostscript or any other plugin on it), and an image with more
pixels than `max_pixels` is refused from its header, before a byte of it is decoded.

    python -c "import skimage.data, io, PIL.Image as I; from distillery import images; \
b = io.BytesIO(); I.fromarray(skimage.data.chelsea()).save(b, 'PNG'); print(images.decode_rgb(b.getvalue()).shape)"
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

# Beyond this many pixels (after draft-mode reduction) an image is refused rather than decoded.
MAX_DECODED_PIXELS = 120_000_000
# The formats Pillow may open; anything else is refused before a plugin of another format sees it.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")


class ImageDecodeError(ValueError):
    """An input that is not a decodable image; the message is the reason for the dead letter."""


def decode_rgb(encoded: bytes, min_side: int | None = None, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Decodes image bytes into an [H, W, 3] uint8 RGB array.

    Args:
      encoded: the file's bytes: JPEG, PNG, GIF, BMP, TIFF or WebP (`ACCEPTED_FORMATS`).
      min_side: when set, large JPEGs may be decoded at 1/2, 1/4 or 1/8 scale as long as the shorter
        side stays >= min_side (a memory and speed bound, not a resize).
      max_pixels: an image of more pixels is refused before it is decoded (the header's size; for a JPEG
        the size after the draft-mode reduction, which is what gets allocated).

    Raises:
      ImageDecodeError: empty, truncated, unknown or unsupported input.
    """
    if not encoded:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # PIL warns on the header's size (> 89M pixels, e.g. a 12000x9000 photo) before draft mode can
            # reduce it; the size that costs memory is the one after draft, checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(encoded), formats=ACCEPTED_FORMATS)
            if min_side and image.format == "JPEG":
                width, height = image.size
                scale = max(1, min(width, height) // min_side)
                if scale > 1:
                    image.draft("RGB", (width // scale, height // scale))
            if image.size[0] * image.size[1] > max_pixels:
                raise ImageDecodeError(f"image of {image.size[0]}x{image.size[1]} pixels is too large to decode "
                                       f"(more than {max_pixels} pixels)")
            image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"image too large: {error}") from None
    except Image.UnidentifiedImageError:
        refused = _other_format(encoded)
        if refused:
            raise ImageDecodeError(f"image format {refused} is not accepted (only {', '.join(ACCEPTED_FORMATS)})"
                                   ) from None
        raise ImageDecodeError("not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"cannot decode image: {error}") from None
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated GIF/WebP: the first frame
    return to_rgb(image)


def _other_format(encoded: bytes) -> str | None:
    """The name of a Pillow format outside ACCEPTED_FORMATS whose signature `encoded` starts with, for the
    message: only the plugins' prefix checks run (the 16 bytes Image.open gives them), no plugin opens it."""
    Image.init()
    prefix = encoded[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name in ACCEPTED_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # pylint: disable=broad-except  # a prefix check that trips on odd bytes: not it
            continue
    return None


def use_pixel_limit(max_pixels: int) -> None:
    """Sets Pillow's own decompression-bomb check (process-wide; it sees only the header, warns above the
    limit and refuses above twice it) to `max_pixels`, so that it agrees with `decode_rgb(max_pixels=...)`:
    called where decoding happens (a Beam worker's setup), from the setting that travels with the job."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image mode to [H, W, 3] uint8 RGB (alpha composited on white, 16-bit scaled)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, np.float64)
        low, high = float(array.min()), float(array.max())
        gray = np.zeros(array.shape, np.uint8) if high <= low else np.round((array - low) / (high - low) * 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        image = image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(image)


def encode_bounded(image: np.ndarray, max_side: int, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image whose longer side is at most `max_side` (aspect ratio kept)."""
    pil = Image.fromarray(np.asarray(image, np.uint8), "RGB")
    longer = max(pil.size)
    if longer > max_side:
        scale = max_side / longer
        pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.BILINEAR,
                         reducing_gap=2.0)
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
