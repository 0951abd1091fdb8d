"""Runs trainer.loop.train in its own process for the trainer tests (not a test module itself).

    python tests/trainer_subprocess_main.py '{"mode": "run", "config": {...}, "weights_out": "w.npz"}'

Modes:
  run: train with the default strategy (optionally sleeping `sleep` s after each step, so a test can
    SIGKILL it mid-run); save the final weights.
  mirrored: split the CPU into two logical devices (before TensorFlow initializes), train once on one
    device and once with MirroredStrategy over both at the same global batch; save both weights.
  multi_worker: train with MultiWorkerMirroredStrategy from TF_CONFIG; save the final weights.
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf
from absl import logging


def main(argv):
    request = json.loads(argv[1])
    mode = request["mode"]
    if mode == "mirrored":
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from trainer import loop  # pylint: disable=import-outside-toplevel (after the device split)
    from trainer.train_config import TrainConfig  # pylint: disable=import-outside-toplevel

    logging.set_verbosity(logging.INFO)
    sleep = request.get("sleep", 0.0)

    def after_step(step):
        del step
        if sleep:
            time.sleep(sleep)

    def run(strategy, **overrides):
        config = TrainConfig(**{**request["config"], **overrides})
        student, summary = loop.train_student(config, strategy, after_step=after_step)
        return [np.asarray(w) for w in student.get_weights()], summary

    if mode == "run":
        weights, _ = run(tf.distribute.get_strategy())
        np.savez(request["weights_out"], *weights)
    elif mode == "mirrored":
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        assert len(devices) == 2, devices
        weights = {}
        for name, strategy in (("one", tf.distribute.OneDeviceStrategy(devices[0])),
                               ("two", tf.distribute.MirroredStrategy(devices))):
            weights[name], summary = run(strategy, model_dir=request["config"]["model_dir"] + "-" + name)
            assert summary["replicas"] == (1 if name == "one" else 2), summary
        np.savez(request["weights_out"], *[w for name in ("one", "two") for w in weights[name]])
    elif mode == "multi_worker":
        weights, summary = run(tf.distribute.MultiWorkerMirroredStrategy())
        assert summary["replicas"] == 2 and summary["steps"] == request["config"]["steps"], summary
        np.savez(request["weights_out"], *weights)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
