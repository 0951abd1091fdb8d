"""Real photos that ship inside installed wheels (scikit-image, scikit-learn, matplotlib), offline.

They are the inputs of the README's ImageNet example, of the built-in teacher's tests and of the
speed benchmarks (docs/decisions/007-offline-teacher-and-data.md: nothing is downloaded; the scikit-image photos that download on
first use are not listed).

    .venv/bin/python -m demo.copy_photos --output_dir=runs/photos/images   # copies them into one folder

This module defines no flags, so the speed benchmarks (which have their own --output_dir) can import it.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

# (wheel, file) of RGB photos of ImageNet-like scenes; each is a file inside the installed package.
PHOTO_FILES = (
    ("skimage", "data/chelsea.png"), ("skimage", "data/coffee.png"), ("skimage", "data/astronaut.png"),
    ("skimage", "data/rocket.jpg"), ("skimage", "data/motorcycle_left.png"), ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/retina.jpg"), ("skimage", "data/ihc.png"), ("skimage", "data/color.png"),
    ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


def photo_paths() -> dict[str, str]:
    """{name: path} of the bundled photos whose packages are installed (name = file stem)."""
    import importlib.util  # pylint: disable=import-outside-toplevel

    paths = {}
    for package, relative in PHOTO_FILES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = os.path.join(list(spec.submodule_search_locations)[0], relative)
        if os.path.exists(path):
            paths[os.path.splitext(os.path.basename(path))[0]] = path
    return paths


def load_photos() -> dict[str, np.ndarray]:
    """{name: [H, W, 3] uint8 RGB} of every bundled photo."""
    return {name: np.asarray(Image.open(path).convert("RGB")) for name, path in photo_paths().items()}


def jittered_jpegs(count: int, seed: int = 0, min_side: int = 300, max_side: int = 500) -> list[bytes]:
    """`count` JPEGs made from random crops (half to all of each side), flips and resizes of the photos.

    For speed benchmarks that need thousands of distinct, realistic inputs; image i depends only on
    (seed, i), so a cache of them stays valid.
    """
    photos = [Image.fromarray(array) for array in load_photos().values()]
    encoded = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        photo = photos[index % len(photos)]
        width, height = photo.size
        scale = rng.uniform(0.5, 1.0)
        crop_width, crop_height = int(width * scale), int(height * scale)
        left, top = int(rng.integers(0, width - crop_width + 1)), int(rng.integers(0, height - crop_height + 1))
        image = photo.crop((left, top, left + crop_width, top + crop_height))
        image = image.resize((int(rng.integers(min_side, max_side + 1)), int(rng.integers(min_side, max_side + 1))),
                             Image.BILINEAR)
        if rng.integers(0, 2):
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded

