"""Copy the bundled photos (distillery/sample_photos.py) into one folder: the input of the README's ImageNet example.

    .venv/bin/python -m demo.copy_photos --output_dir=runs/photos/images
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from absl import flags

from distillery import cli
from distillery import sample_photos as photos

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/photos/images", "Folder to copy the photos into.")


def main(argv: Sequence[str]) -> None:
    del argv
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    for path in photos.photo_paths().values():
        destination = os.path.join(_OUTPUT_DIR.value, os.path.basename(path))
        shutil.copyfile(path, destination)
        print(destination)


if __name__ == "__main__":
    cli.run(main)
