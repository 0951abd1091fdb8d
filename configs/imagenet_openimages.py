"""ImageNet + Open Images: the ImageNet recipe plus a student that also learns from the teacher's soft labels
on Open Images, whose labels it never sees (the unlabeled role of the LPIRC 2018 experiments).

    python -c "import configs; print(configs.get('imagenet_openimages').parts)"
    python -c "import configs; print(configs.get('imagenet_openimages', runlocal=True))"   # the shrunk recipe

Needs ImageNet and Open Images V4 prepared for TFDS and a cluster: on top of ImageNet's 1.28M images x 10
views, Open Images' ~1.7M training images x 4 views through the teacher (docs/extract.md, "On a cluster").
Expected top-1: not measured here; on the demo's Fashion-MNIST stand-in, adding unlabeled images to
distillation gained 0.8 points int8 top-1 (docs/results.md).
"""

from __future__ import annotations

from configs import imagenet
from configs.recipe import DataPart, Recipe, StudentRun


def get_config(runlocal: bool = False) -> Recipe:
    """The ImageNet + Open Images recipe (`runlocal`: a few hundred images of each, a few steps)."""
    base = imagenet.get_config(runlocal)
    unlabeled = DataPart("unlabeled", "tfds:open_images_v4:train[:256]" if runlocal else "tfds:open_images_v4:train",
                         views=4)
    students = (*imagenet.students(),
                StudentRun("distilled_unlabeled", ("labelled", "unlabeled"), alpha=0.5, temperature=1.0))
    return Recipe(name="imagenet_openimages", teachers=base.teachers, parts=(*base.parts, unlabeled),
                  eval_part=base.eval_part, students=students, **imagenet.settings(runlocal))
