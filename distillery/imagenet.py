"""ImageNet class indices, WordNet synsets and human-readable names, all from files TFDS ships.

Index order is the standard one (TFDS imagenet2012, torchvision, Keras applications): synset
n01440764 is class 0 ("tench"). Nothing is downloaded.

    python -c "from distillery import imagenet; print(imagenet.class_names()[281], imagenet.synset_to_index()['n02123045'])"
"""

from __future__ import annotations

import functools
import importlib.resources

NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def synsets() -> tuple[str, ...]:
    """The 1000 WordNet ids in class-index order (tensorflow_datasets imagenet2012 labels.txt)."""
    text = importlib.resources.files("tensorflow_datasets.datasets.imagenet2012").joinpath("labels.txt").read_text()
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"tensorflow_datasets imagenet2012 labels.txt holds {len(names)} synsets, expected 1000")
    return names


@functools.lru_cache(maxsize=1)
def synset_to_index() -> dict[str, int]:
    """WordNet id (e.g. 'n02123045') -> class index."""
    return {synset: index for index, synset in enumerate(synsets())}


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """Short human-readable names in class-index order ('tench', ..., 'tabby')."""
    # TFDS ships the standard index-ordered list of names with its SI-Score dataset.
    from tensorflow_datasets.datasets.siscore import labels  # pylint: disable=import-outside-toplevel
    full = labels.IMAGENET_LABELS_LIST
    if len(full) != NUM_CLASSES:
        raise RuntimeError(f"the TFDS ImageNet name list holds {len(full)} names, expected 1000")
    return tuple(name.split(",")[0].strip() for name in full)
