"""The settings of one training run: each field is also a `distillery-train` flag (distillery/cli.py).

    python -c "from trainer.train_config import TrainConfig; help(TrainConfig)"
"""

from __future__ import annotations

import dataclasses

from distillery import saved_model_check
from distillery.cli import option
from trainer import bad_records, data, precision, students

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; the field's help text is its flag's."""

    train_pattern: str = option(flag="train", help="Glob(s) of soft-label record files to train on (local or gs://).")
    model_dir: str = option(help="Output directory; a rerun resumes from its checkpoints when its settings match "
                                 "(run_config.json; docs/train.md says which may change).")
    student: str = option("mobilenet_v1", choices=students.STUDENTS, help="Student architecture.")
    width: float = option(1.0, help="Width multiplier (alpha).")
    image_size: int = option(224, help="Student input side in pixels.")
    eval_pattern: str | None = option(None, flag="eval", help="Glob(s) of labeled records for the top-1/top-5 "
                                                                    "(final, and every --eval_every steps).")
    teacher: str | None = option(None, help="Online mode: a teacher spec (.keras, SavedModel dir, builtin:NAME) run "
                                            "inside the step; default: offline, from the records.")
    trust_saved_model: bool = option(False, help=saved_model_check.TRUST_HELP)
    num_classes: int | None = option(None, help="Expected number of classes (default: the records'); "
                                                "a mismatch anywhere is an error.")
    batch_size: int = option(64, help="Global batch size (over all replicas and workers).")
    steps: int = option(1000, help="Number of training steps.")
    learning_rate: float = option(0.05, help="Peak learning rate (cosine decay to 0 over --steps).")
    optimizer: str = option("sgd", choices=OPTIMIZERS, help="sgd (Nesterov momentum 0.9) or adam.")
    warmup_steps: int = option(0, lower_bound=0, help="Steps of linear warmup from 0 to --learning_rate before the "
                                                      "cosine decay over the remaining steps.")
    weight_decay: float = option(0.0, lower_bound=0.0, help="Decoupled weight decay (each step w -= lr * wd * w; "
                                                            "adam: AdamW) of the kernels, not of biases or batch norm.")
    mixed_precision: str = option("float32", choices=precision.PRECISIONS,
                                  help="The student's layers compute in bfloat16 or float16 (float32 variables; "
                                       "float16 with loss scaling); the exported student is float32.")
    jit_compile: bool = option(False, help="XLA-compile each replica's forward and backward pass (the optimizer "
                                           "update and the gradient all-reduce stay outside it).")
    sync_batch_norm: bool = option(False, help="Batch-norm statistics over the global batch (all-reduced over the "
                                               "replicas) instead of each replica's share: for many replicas with "
                                               "few images each.")
    ema_decay: float = option(0.0, lower_bound=0.0, help="Keep an exponential moving average of the weights with "
                                                         "this decay, updated after each step and checkpointed; "
                                                         "the exported student is the average (0: off).")
    label_smoothing: float = option(0.0, lower_bound=0.0, help="Label smoothing of the hard-label term, in [0, 1) "
                                                               "(the teacher's distribution is left as it is).")
    alpha: float = option(0.5, help="Weight of the hard-label cross-entropy term.")
    temperature: float = option(4.0, help="Distillation temperature T.")
    checkpoint_every: int = option(500, help="Checkpoint interval in steps (0: at the end).")
    log_every: int = option(100, help="Log line / TensorBoard interval in steps.")
    max_checkpoints: int = option(3, help="Checkpoints kept.")
    seed: int = option(0, help="Seed of initialization, shuffling and view choices.")
    shuffle_buffer: int = option(data.DEFAULT_SHUFFLE_BUFFER, help="Records in the shuffle buffer.")
    max_bad_fraction: float = option(bad_records.DEFAULT_MAX_BAD_FRACTION, lower_bound=0.0,
                                     help="Bad records (corrupt, unparsable, non-finite logits, missing or undecodable "
                                          "image) are skipped and counted; the run stops once more than this fraction "
                                          "of the examples seen are bad (checked at each log line).")
    eval_batch_size: int = option(100, help="Global batch size of the evaluations (over all replicas).")
    eval_every: int = option(0, lower_bound=0, help="Evaluate on --eval every N steps (on every replica), write "
                                                    "eval/top1 and eval/top5 under logs/eval and keep the best "
                                                    "top-1's student as best/ (0: only the final evaluation).")
    overwrite: bool = option(False, help="Remove --model_dir's checkpoints and outputs and start over (instead of "
                                         "resuming, or of refusing a run whose settings differ).")
