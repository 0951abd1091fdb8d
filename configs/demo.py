"""The demo's recipe (`make demo`): the whole chain on Fashion-MNIST, full or shrunk (`runlocal`).

    make demo                                           # get_config(): the full run, about 17-20 minutes on 2 cores
    .venv/bin/python -m demo.run --runlocal --output_dir=/tmp/demo-tiny   # get_config(runlocal=True), ~1.5 minutes

Expected (full run, 2 cores; docs/results.md has the measured table and its command): teacher ~87.5% top-1
on the test set; int8 students: hard-label ~81.5%, distilled ~83.8%, distilled + unlabeled ~84.6%; int8
within 0.1 point of float; the layerwise-factorized student ~21% faster and ~0.2 points lower. The tiny
run checks the plumbing, not accuracy.
"""

from __future__ import annotations

import dataclasses

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
