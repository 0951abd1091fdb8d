"""Runs `distillery-train`'s own flags and training on the given arguments and saves the student's weights
(not a test module), so that a test can compare what the chief and a worker of one cluster end with.

    python tests/cluster_train_main.py WEIGHTS.npz --train=... --model_dir=... --strategy=multi_worker

The same steps as trainer/train.py's main: its flags parse the arguments, `loop.make_strategy` builds the
strategy (TF_CONFIG, or a JobSet pod's variables), `loop.train_student` trains.
"""

import sys

import numpy as np
from absl import flags


def main(argv):
    weights_out, arguments = argv[1], argv[2:]
    from distillery import cli
    from trainer import loop, train  # noqa: F401 (train defines distillery-train's flags)
    from trainer.train_config import TrainConfig

    flags.FLAGS(["distillery-train", *arguments])
    config = cli.from_flags(TrainConfig)
    student, summary = loop.train_student(config, loop.make_strategy(flags.FLAGS.strategy))
    np.savez(weights_out, *[np.asarray(weight) for weight in student.get_weights()])
    print(summary)


if __name__ == "__main__":
    main(sys.argv)
