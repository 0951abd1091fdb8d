"""The LPIRC 2018 score: accuracy per unit of runtime, with a 30 ms-per-image floor.

Track 1 of the Low-Power Image Recognition Challenge 2018 scored a classifier on T images as

    score = accuracy / max(30 * T, runtime_ms)

so a model gains nothing by running faster than 30 ms per image on average; below that only accuracy
counts. `runtime_ms` is the total time of all T images (here: the summed interpreter invoke times of
the evaluation, on the benchmark's threads).

    python -c "from benchmark import score; print(score.lpirc_score(0.70, 1800.0, 100))"
"""

from __future__ import annotations

MS_PER_IMAGE_FLOOR = 30.0


def lpirc_score(accuracy: float, runtime_ms: float, images: int, ms_per_image: float = MS_PER_IMAGE_FLOOR) -> float:
    """accuracy / max(ms_per_image * images, runtime_ms).

    Args:
      accuracy: top-1 as a fraction (0..1).
      runtime_ms: total runtime of all `images`, in ms.
      images: T, how many images were evaluated.
      ms_per_image: the floor per image (30 ms in LPIRC 2018).

    Raises:
      ValueError: for no images, a negative runtime or an accuracy outside 0..1.
    """
    if images < 1:
        raise ValueError(f"the LPIRC score needs at least one image, got T={images}")
    if runtime_ms < 0:
        raise ValueError(f"runtime must be >= 0 ms, got {runtime_ms}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a fraction in 0..1, got {accuracy}")
    return accuracy / max(ms_per_image * images, runtime_ms)
