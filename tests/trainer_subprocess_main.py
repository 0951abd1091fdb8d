"""Runs trainer.loop.train in its own process for the trainer tests (not a test module itself).

    python tests/trainer_subprocess_main.py '{"mode": "run", "config": {...}, "weights_out": "w.npz"}'

Modes:
  run: train with the default strategy (optionally sleeping `sleep` s after each step, so a test can
    SIGKILL it mid-run); save the final weights.
  mirrored: split the CPU into two logical devices (before TensorFlow initializes), train once on one
    device and once with MirroredStrategy over both at the same global batch; save both weights, and
    the weights each run's student was initialized with (`initial_out`, when given).
  eval_counts: split the CPU into two logical devices, build one student (seed `seed`) under
    OneDeviceStrategy and under MirroredStrategy over both, with the same weights, and evaluate it on
    `eval_pattern` under each (trainer.task.evaluate at `eval_batch_size`); write both results and the
    weights as JSON / npz to `out` and `weights_out`.
  multi_worker: train with MultiWorkerMirroredStrategy from TF_CONFIG; save the final weights.
    With `two_only`, only the run on both devices (a second MirroredStrategy after one whose batch norms
    all-reduce fails in one process: its collectives' instance keys no longer match).
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
    if mode in ("mirrored", "eval_counts"):
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from trainer import loop, task  # pylint: disable=import-outside-toplevel (after the device split)
    from trainer.train_config import TrainConfig  # pylint: disable=import-outside-toplevel

    logging.set_verbosity(logging.INFO)
    sleep = request.get("sleep", 0.0)
    if mode == "eval_counts":
        evaluate_on_one_and_two_devices(request)
        return
    initial = []  # the weights of every student the loop builds, as it built them
    build_model = task.DistillationTask.build_model

    def recording_build_model(self):
        model = build_model(self)
        initial.append([np.asarray(w).copy() for w in model.get_weights()])
        return model

    task.DistillationTask.build_model = recording_build_model

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
        runs = (("one", tf.distribute.OneDeviceStrategy(devices[0])), ("two", tf.distribute.MirroredStrategy(devices)))
        for name, strategy in runs[1:] if request.get("two_only") else runs:
            weights[name], summary = run(strategy, model_dir=request["config"]["model_dir"] + "-" + name)
            assert summary["replicas"] == (1 if name == "one" else 2), summary
        np.savez(request["weights_out"], *[w for name in ("one", "two") if name in weights for w in weights[name]])
        if request.get("initial_out"):
            np.savez(request["initial_out"], *[w for weights in initial for w in weights])
    elif mode == "multi_worker":
        weights, summary = run(tf.distribute.MultiWorkerMirroredStrategy())
        assert summary["replicas"] == 2 and summary["steps"] == request["config"]["steps"], summary
        np.savez(request["weights_out"], *weights)
    else:
        raise SystemExit(f"unknown mode {mode}")


def evaluate_on_one_and_two_devices(request):
    import keras  # pylint: disable=import-outside-toplevel

    from trainer import students, task  # pylint: disable=import-outside-toplevel

    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    keras.utils.set_random_seed(request.get("seed", 0))
    weights = students.build_student("small_cnn", 0.25, 32, request["num_classes"]).get_weights()
    results = {}
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy(devices[0])),
                           ("two", tf.distribute.MirroredStrategy(devices))):
        with strategy.scope():
            model = students.build_student("small_cnn", 0.25, 32, request["num_classes"])
            model.set_weights(weights)
        results[name] = dict(task.evaluate(model, request["eval_pattern"], 32, request["eval_batch_size"], strategy),
                             replicas=strategy.num_replicas_in_sync)
    with open(request["out"], "w", encoding="utf-8") as handle:
        json.dump(results, handle)
    np.savez(request["weights_out"], *weights)


if __name__ == "__main__":
    main(sys.argv)
