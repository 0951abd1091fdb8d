"""The demo's recipe (`make demo`): the whole chain on Fashion-MNIST, full or shrunk (`runlocal`).

    make demo                                           # get_config(): the full run, about 17-20 minutes on 2 cores
    .venv/bin/python -m demo.run --runlocal --output_dir=/tmp/demo-tiny   # get_config(runlocal=True), ~1.5 minutes

Expected (full run, 2 cores; docs/results.md has the measured table and its command): teacher ~87.5% top-1
on the test set; int8 students: hard-label ~81.5%, distilled ~83.8%, distilled + unlabeled ~84.6%; int8
within 0.1 point of float; the layerwise-factorized student ~21% faster and ~0.2 points lower. The tiny
run checks the plumbing, not accuracy.

`recipe(cfg)` is the same chain as a Recipe (configs/recipe.py), the form configs/chain.py turns into the
stages that demo/run.py and the Kubeflow pipeline (pipelines_kfp/) both run:

    python -c "import configs; print(configs.get_recipe('demo', runlocal=True).students)"
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from configs.recipe import Recipe

# The full demo's factorization: 1/8 of the rank of every 1x1 convolution with >= 128 output channels
# (conv_pw_6 .. conv_pw_13 of MobileNet V1 0.25 at 32x32). Each split adds an op with a fixed cost, so on
# this ~0.05 ms int8 student only the wide late layers at a low rank gain time; splitting the narrow early
# ones makes it slower (docs/results.md, "How the demo's settings were chosen").
FULL_STUDENT_RANKS = ("conv_pw_6:8,conv_pw_7:16,conv_pw_8:16,conv_pw_9:16,conv_pw_10:16,conv_pw_11:16,"
                      "conv_pw_12:16,conv_pw_13:32")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Every knob of the end-to-end run. The values were chosen on a validation split, never the test set
    (docs/results.md, "How the demo's settings were chosen")."""

    labelled: int = 10000          # the ImageNet role: labelled training images
    unlabeled: int = 20000         # the Open Images role: training images with labels removed
    test: int = 10000              # held-out evaluation
    teacher_width: int = 32
    teacher_epochs: int = 12
    teacher_dropout: float = 0.1   # more underfits: the random views already regularize
    views: int = 2                 # stored views per training image
    top_k: int = 10                # Fashion-MNIST has 10 classes: full logits
    min_scale: float = 0.7         # random crops of >= 70% of the padded 32x32 image (the teacher trains on them too)
    student: str = "mobilenet_v1"
    student_width: float = 0.25
    image_size: int = 32
    batch_size: int = 128
    train_steps: int = 2000        # ~26 passes over the labelled images (13 over their stored views)
    train_steps_unlabeled: int = 3500  # the labelled + unlabeled student: 3x the images, trained longer
    learning_rate: float = 0.05
    alpha: float = 0.5             # hard-label weight of the distilled students
    # One distillation temperature per distilled student. On the unlabeled images the soft term is the only
    # signal, and a flatter target carries less of the class; on the labelled ones the teacher is nearly
    # one-hot (it trained on them), and a higher T brings its second choices back.
    distilled_temperature: float = 6.0
    unlabeled_temperature: float = 4.0
    factorize_energy: float | None = None           # rank selection: keep this energy per layer, or
    factorize_latency_reduction: float | None = None  # ... a latency budget this fraction below the student's,
    factorize_ranks: str | None = FULL_STUDENT_RANKS  # ... or explicit LAYER:RANK pairs (--ranks)
    factorize_steps: int = 300     # fine-tuning steps in all (layerwise: split over the layers)
    factorize_final_steps: int = 1200  # then every weight jointly
    factorize_learning_rate: float = 2e-3  # Adam, peak of each phase's cosine decay
    calibration_steps: int = 200
    benchmark_runs: int = 200      # timed runs per model per round
    benchmark_rounds: int = 10     # interleaved rounds (the speed-up goal compares two models' medians)
    seed: int = 0

    def __post_init__(self) -> None:
        chosen = [self.factorize_energy, self.factorize_latency_reduction, self.factorize_ranks]
        if sum(value is not None for value in chosen) != 1:
            raise ValueError("set exactly one of factorize_energy, factorize_latency_reduction and factorize_ranks")


FULL = DemoConfig()

TINY = DemoConfig(labelled=240, unlabeled=240, test=200, teacher_width=8, teacher_epochs=2, views=2,
                  student_width=0.25, batch_size=32, train_steps=30, train_steps_unlabeled=40,
                  # Two layers, not all 14: each layerwise phase traces a new step function.
                  factorize_ranks="conv_pw_12:16,conv_pw_13:32", factorize_latency_reduction=None,
                  factorize_steps=10, factorize_final_steps=5,
                  calibration_steps=10, benchmark_runs=5, benchmark_rounds=2)


def get_config(runlocal: bool = False) -> DemoConfig:
    """The full demo, or with `runlocal` the tiny one the tests run (a few hundred images, tiny models)."""
    return TINY if runlocal else FULL


# The demo's parts, as demo/data.py writes them: the labelled, unlabeled and test TFRecords.
PARTS = ("labelled", "unlabeled", "test")
STORE_IMAGE_MAX_SIDE = 64  # the records keep the 32x32 images themselves (PNG), for the views the students replay
LOG_EVERY = 250


def recipe(cfg: DemoConfig, data_dir: str = "data", teacher: str = "teacher.keras") -> Recipe:
    """The demo's chain as a Recipe: the three parts that demo/data.py writes into `data_dir`
    (DIR/labelled.tfrecord, ...), the teacher that demo/teacher.py trains (`teacher`), the three students
    of the seed experiments (hard labels, distilled, distilled + unlabeled, which trains longer) and every
    job's settings from `cfg`. The default paths are relative to the run's folder; demo/run.py passes its
    output folder's, the pipeline its artifacts'.
    """
    from compress.factorize_job import parse_ranks  # pylint: disable=import-outside-toplevel  (TensorFlow)
    from configs.recipe import DataPart, Recipe, StudentRun  # pylint: disable=import-outside-toplevel

    parts = tuple(DataPart(name, f"tfrecord:{data_dir}/{name}.tfrecord", views=1 if name == "test" else cfg.views)
                  for name in PARTS)
    # Hard labels only (alpha 1): its temperature, the distilled one's, is only recorded, and is the
    # factorize job's if it turns out the best student.
    students = (StudentRun("hard", ("labelled",), alpha=1.0, temperature=cfg.distilled_temperature),
                StudentRun("distilled", ("labelled",), alpha=cfg.alpha, temperature=cfg.distilled_temperature),
                StudentRun("distilled_unlabeled", ("labelled", "unlabeled"), alpha=cfg.alpha,
                           temperature=cfg.unlabeled_temperature, train={"steps": cfg.train_steps_unlabeled}))
    if cfg.factorize_energy is not None:
        selection = {"energy": cfg.factorize_energy}
    elif cfg.factorize_ranks is not None:
        selection = {"ranks": parse_ranks(cfg.factorize_ranks)}
    else:
        selection = {"latency_reduction": cfg.factorize_latency_reduction}
    return Recipe(
        name="demo", teachers=(teacher,), parts=parts, eval_part="test",
        students=students,
        extract={"top_k": cfg.top_k, "min_scale": cfg.min_scale, "seed": cfg.seed,
                 "store_image_max_side": STORE_IMAGE_MAX_SIDE, "overwrite": True},
        train={"student": cfg.student, "width": cfg.student_width, "image_size": cfg.image_size,
               "steps": cfg.train_steps, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
               "seed": cfg.seed, "log_every": LOG_EVERY, "overwrite": True},  # each make demo trains afresh
        factorize=selection,
        finetune={"mode": "layerwise", "steps": cfg.factorize_steps, "final_steps": cfg.factorize_final_steps,
                  "batch_size": cfg.batch_size, "learning_rate": cfg.factorize_learning_rate, "alpha": cfg.alpha},
        quantize={"mode": "int8", "calibration_steps": cfg.calibration_steps},
        benchmark={"num_threads": 1, "runs": cfg.benchmark_runs, "rounds": cfg.benchmark_rounds, "profile": True})
