"""distillery-train: distill a student from soft-label records (offline) or a teacher in the loop (online).

The library is trainer/loop.py (`train(TrainConfig, strategy)`); this is its thin absl entry point.

    distillery-train --train='runs/demo/records/train-*' --eval='runs/demo/records/eval-*' \
        --student=mobilenet_v1 --width=0.25 --image_size=128 --model_dir=runs/demo/student --steps=2000

Online baseline (the teacher runs inside the step on the same view):

    distillery-train ... --teacher=builtin:mobilenet_v2_imagenet

Multi-worker: set TF_CONFIG on every worker and pass --strategy=multi_worker (README.md "Training").
Outputs: DIR/student.keras, DIR/saved_model/, DIR/summary.json, DIR/logs/ (TensorBoard), DIR/checkpoints/.
A rerun with the same --model_dir resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from distillery import records
from trainer import data, loop, students

_TRAIN = flags.DEFINE_string("train", None, "Glob(s) of soft-label record files to train on (local or gs://).")
_EVAL = flags.DEFINE_string("eval", None, "Glob(s) of labeled records for the final top-1/top-5.")
_STUDENT = flags.DEFINE_enum("student", "mobilenet_v1", students.STUDENTS, "Student architecture.")
_WIDTH = flags.DEFINE_float("width", 1.0, "Width multiplier (alpha).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Student input side in pixels.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output directory; a rerun resumes from its checkpoints.")
_STRATEGY = flags.DEFINE_enum("strategy", "default", loop.STRATEGIES,
                              "default: one device; mirrored: all local GPUs; multi_worker: the TF_CONFIG cluster.")
_TEACHER = flags.DEFINE_string("teacher", None, "Online mode: a teacher spec (.keras, SavedModel dir, builtin:NAME) "
                               "run inside the step; default: offline, from the records.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Expected number of classes (default: the records').")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size (over all replicas and workers).")
_STEPS = flags.DEFINE_integer("steps", 1000, "Number of training steps.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.05, "Peak learning rate (cosine decay).")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "sgd", loop.OPTIMIZERS, "sgd (Nesterov momentum 0.9) or adam.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Weight of the hard-label cross-entropy term.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Distillation temperature T.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint interval in steps (0: at the end).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 100, "Log line / TensorBoard interval in steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialization, shuffling and view choices.")
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", data.DEFAULT_SHUFFLE_BUFFER, "Records in the shuffle buffer.")

flags.mark_flags_as_required(["train", "model_dir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    config = loop.TrainConfig(
        train_pattern=_TRAIN.value, model_dir=_MODEL_DIR.value, student=_STUDENT.value, width=_WIDTH.value,
        image_size=_IMAGE_SIZE.value, eval_pattern=_EVAL.value, teacher=_TEACHER.value,
        num_classes=_NUM_CLASSES.value, batch_size=_BATCH_SIZE.value, steps=_STEPS.value,
        learning_rate=_LEARNING_RATE.value, optimizer=_OPTIMIZER.value, alpha=_ALPHA.value,
        temperature=_TEMPERATURE.value, checkpoint_every=_CHECKPOINT_EVERY.value, log_every=_LOG_EVERY.value,
        seed=_SEED.value, shuffle_buffer=_SHUFFLE_BUFFER.value)
    try:
        summary = loop.train(config, loop.make_strategy(_STRATEGY.value))
    except (loop.TrainInputError, records.RecordError) as error:
        sys.exit(f"distillery-train: error: {error}")
    print(json.dumps({key: summary.get(key) for key in
                      ("steps", "images_per_second", "top1", "top5", "loss", "outputs")}, indent=None))


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
