"""distillery-train: distill a student from soft-label records (offline) or a teacher in the loop (online).

The library is trainer/loop.py (`train(TrainConfig, strategy)`); this is its thin absl entry point, and
its flags are the fields of trainer/train_config.py.

    distillery-train --train='runs/demo/records/train-*' --eval='runs/demo/records/eval-*' \
        --student=mobilenet_v1 --width=0.25 --image_size=128 --model_dir=runs/demo/student --steps=2000

Online baseline (the teacher runs inside the step on the same view):

    distillery-train ... --teacher=builtin:mobilenet_v2_imagenet

Multi-worker: set TF_CONFIG on every worker and pass --strategy=multi_worker (docs/train.md).
Outputs: DIR/student.keras, DIR/saved_model/, DIR/summary.json, DIR/run_config.json, DIR/logs/ (TensorBoard),
DIR/checkpoints/, and with --eval_every=N DIR/best/ (the best top-1's student); each file is written under a
temporary name and renamed into place. A rerun with the same --model_dir resumes from the latest checkpoint
when its settings match the run's (else it is refused, listing them; --overwrite starts over); a rerun
with --steps at or below the finished step does nothing.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from distillery import cli, records
from trainer import loop, loss_guard
from trainer.train_config import TrainConfig

cli.define_flags(TrainConfig)
_STRATEGY = flags.DEFINE_enum("strategy", "default", loop.STRATEGIES,
                              "default: one device; mirrored: all local GPUs; multi_worker: the TF_CONFIG cluster.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    config = cli.from_flags(TrainConfig)
    try:
        summary = loop.train(config, loop.make_strategy(_STRATEGY.value))
    except (loop.TrainInputError, records.RecordError, loss_guard.NonFiniteLossError) as error:
        sys.exit(f"distillery-train: error: {error}")
    if "nothing_to_do" in summary:
        print(f"distillery-train: {summary['nothing_to_do']}", file=sys.stderr)
    print(json.dumps({key: summary.get(key) for key in
                      ("steps", "images_per_second", "top1", "top5", "loss", "outputs")}, indent=None))


def run_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    run_main()
