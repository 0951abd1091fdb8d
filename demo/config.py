"""The demo's settings: one Python config, with a `tiny` switch that shrinks everything for the tests.

    make demo                                   # the full preset, 17m08s measured on 2 cores
    .venv/bin/python -m demo.run --preset=tiny  # a few hundred images and tiny models, ~2.5 minutes

Full preset, measured on 2 cores (README "The end-to-end run" has the table): teacher 87.45% top-1 on
the test set; int8 students: hard-label 81.45%, distilled 83.78%, distilled + unlabeled 84.59%; int8
0.06 points above float; the layerwise-factorized student 21.2% faster and 0.22 points lower.
"""

from __future__ import annotations

import dataclasses

# The full demo's factorization: 1/8 of the rank of every 1x1 convolution with >= 128 output channels
# (conv_pw_6 .. conv_pw_13 of MobileNet V1 0.25 at 32x32: 8 of 14). The per-op profile of this ~0.05 ms
# int8 student decides it: each split adds an op with a fixed cost of ~1-2 us, so splitting the narrow
# early layers makes the model slower (measured), and only the wide late layers at a low rank gain enough
# (1/8: ~20% faster, 1/4: ~9%). The latency-budget selection (`--latency_reduction=0.25`), which the demo
# used before, took the narrow layers at ranks 2-5 and was 7% faster and 5.5 points lower after fine-tuning.
FULL_STUDENT_RANKS = ("conv_pw_6:8,conv_pw_7:16,conv_pw_8:16,conv_pw_9:16,conv_pw_10:16,conv_pw_11:16,"
                      "conv_pw_12:16,conv_pw_13:32")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Every knob of the end-to-end run."""

    labelled: int = 10000          # the ImageNet role: labelled training images
    unlabeled: int = 20000         # the Open Images role: training images with labels removed
    test: int = 10000              # held-out evaluation
    teacher_width: int = 32
    teacher_epochs: int = 12        # centre-crop top-1 after 10 epochs 86.6%, after 14 88.0% (measured)
    teacher_dropout: float = 0.1   # 0.3 underfit: the random views already regularize
    views: int = 2                 # stored views per training image
    top_k: int = 10                # Fashion-MNIST has 10 classes: full logits
    min_scale: float = 0.7         # random crops of >= 70% of the padded 32x32 image (the teacher trains on them too)
    student: str = "mobilenet_v1"
    student_width: float = 0.25
    image_size: int = 32
    batch_size: int = 128
    train_steps: int = 2000        # ~26 passes over the labelled images (13 over their stored views)
    # The labelled + unlabeled student: 3x the images, trained longer. Float top-1 at T = 4 (test / the
    # validation split below): 3000 steps 83.59% / 84.68%, 3500 steps 84.53% / 85.16%.
    train_steps_unlabeled: int = 3500
    learning_rate: float = 0.05
    alpha: float = 0.5             # hard-label weight of the distilled students
    # Distillation temperatures, one per distilled student, chosen on a validation split: 10k training
    # images the demo uses for nothing else (Fashion-MNIST train 30000-39999, extracted by the same
    # teacher), never the test set. Float top-1 on it, 2000 / 3000 steps, seed 0 (README "Choosing the
    # temperatures"): distilled T = 4 83.34%, 5 83.67%, 6 84.75% (seed 1 84.00%), 8 83.78% (seed 1
    # 83.80%); distilled + unlabeled T = 4 84.68%, 6 84.52%, 8 84.20%; hard-label 82.58% (seed 1 82.90%).
    # On the unlabeled images the soft term is the only signal, and a flatter target carries less of
    # the class; on the labelled ones the teacher is nearly one-hot (it trained on them), and a higher T
    # brings its second choices back.
    distilled_temperature: float = 6.0
    unlabeled_temperature: float = 4.0
    factorize_energy: float | None = None           # rank selection: keep this energy per layer, or
    factorize_latency_reduction: float | None = None  # ... a latency budget this fraction below the student's,
    factorize_ranks: str | None = FULL_STUDENT_RANKS  # ... or explicit LAYER:RANK pairs (--ranks)
    # Fine-tuning of the factorized student, measured on the full demo's best student (float top-1 after;
    # one thread). The 3000-step one (83.59% before): 300 layerwise + 1200 joint steps at a peak learning
    # rate of 2e-3: 83.54%; at 1e-3: 300 + 1500 82.79%, 600 + 1200 82.71%, 600 + 1800 83.19%, 600 + 2400
    # 83.58%. The 3500-step one (84.53% before), at 2e-3: 300 + 1200 84.28%, 300 + 1000 83.76%.
    factorize_steps: int = 300     # fine-tuning steps in all (layerwise: split over the layers)
    factorize_final_steps: int = 1200  # then every weight jointly
    factorize_learning_rate: float = 2e-3  # Adam, peak of each phase's cosine decay (the job's default: 1e-3)
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
                  # Two layers, not all 14: each layerwise phase traces a new step function (~3.5 s).
                  factorize_ranks="conv_pw_12:16,conv_pw_13:32", factorize_latency_reduction=None,
                  factorize_steps=10, factorize_final_steps=5,
                  calibration_steps=10, benchmark_runs=5, benchmark_rounds=2)

PRESETS = {"full": FULL, "tiny": TINY}
