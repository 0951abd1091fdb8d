"""Evaluation during training (--eval_every, trainer/eval_hook.py): TensorBoard eval scalars at the right
steps, best/ holds the weights of the best top-1's step, and two replicas count what one device counts.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_trainer_eval.py
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import trainer_fixtures as fixtures
from top1_check import independent_top1

from distillery import record_pixels, records
from trainer import driver, eval_hook, loop, students
from trainer.train_config import TrainConfig

HELPER = os.path.join(os.path.dirname(__file__), "trainer_subprocess_main.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def record_globs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    teacher = fixtures.tiny_teacher_model()
    train = fixtures.write_tiny_records(directory, teacher, num_files=2, per_file=8, num_views=2)
    evaluation = fixtures.write_tiny_records(directory, teacher, num_files=1, per_file=14, num_views=1, prefix="eval",
                                             first_index=500, unlabeled_every=4)
    return train, evaluation


def _read_scalars(directory):
    scalars = {}
    for event_file in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, event_file)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return scalars


def test_the_hook_evaluates_on_the_interval_and_at_the_end_and_keeps_the_best(tmp_path):
    top1s = iter([0.3, 0.5, 0.4, 0.45])
    bests = []
    writer = tf.summary.create_file_writer(str(tmp_path / "eval"))
    hook = eval_hook.EvalHook(lambda: {"top1": next(top1s), "top5": 0.9, "images": 10}, every=3, writer=writer,
                              on_best=lambda step, result: bests.append((step, result["top1"])), log=lambda line: None)
    driver.run_steps(lambda iterator: {"loss": 1.0}, iter(()), 0, 10, batch_size=1, log_every=5, hooks=[hook],
                     log=lambda line: None)
    writer.close()
    assert sorted(hook.results) == [3, 6, 9, 10]  # every 3 steps, then the last step
    assert bests == [(3, 0.3), (6, 0.5)] and hook.best_top1 == 0.5
    scalars = _read_scalars(tmp_path / "eval")
    assert scalars["eval/top1"] == [(3, pytest.approx(0.3)), (6, 0.5), (9, pytest.approx(0.4)),
                                    (10, pytest.approx(0.45))]  # float32 scalars
    assert [step for step, _ in scalars["eval/top5"]] == [3, 6, 9, 10]
    # A resumed run's best so far (best.json) must be beaten before best/ is rewritten.
    resumed = eval_hook.EvalHook(lambda: {"top1": 0.55, "top5": 1.0, "images": 10}, every=2, best_top1=0.6,
                                 on_best=lambda step, result: bests.append(step), log=lambda line: None)
    driver.run_steps(lambda iterator: {"loss": 1.0}, iter(()), 10, 14, batch_size=1, log_every=5, hooks=[resumed],
                     log=lambda line: None)
    assert sorted(resumed.results) == [12, 14] and bests == [(3, 0.3), (6, 0.5)]


def test_eval_every_writes_eval_scalars_and_exports_the_best_steps_weights(record_globs, tmp_path):
    train, evaluation = record_globs
    model_dir = tmp_path / "run"
    config = TrainConfig(train_pattern=train, model_dir=str(model_dir), student="small_cnn", width=0.25, image_size=32,
                         batch_size=4, steps=7, learning_rate=0.3, checkpoint_every=1, max_checkpoints=10, log_every=7,
                         temperature=2.0, shuffle_buffer=16, eval_pattern=evaluation, eval_every=2, eval_batch_size=4)
    student, summary = loop.train_student(config)

    scalars = _read_scalars(model_dir / "logs" / "eval")
    assert [step for step, _ in scalars["eval/top1"]] == [2, 4, 6, 7]  # every 2 steps, and the last one
    assert [step for step, _ in scalars["eval/top5"]] == [2, 4, 6, 7]
    top1_by_step = dict(scalars["eval/top1"])
    assert summary["top1"] == pytest.approx(top1_by_step[7]) and summary["eval_images"] == 10  # 14, 4 unlabelled
    best_step = max(top1_by_step, key=lambda step: (top1_by_step[step], -step))  # the first of the best
    best = json.load(open(model_dir / "best" / "best.json"))
    assert best["step"] == best_step and best["top1"] == pytest.approx(top1_by_step[best_step])
    assert summary["best"] == best and summary["outputs"]["best"] == str(model_dir / "best")

    # best/ holds the weights of that step (its checkpoint), and evaluates to its top-1 independently.
    saved = keras.saving.load_model(model_dir / "best" / "student.keras")
    at_best = students.build_student("small_cnn", 0.25, 32, fixtures.NUM_CLASSES)
    tf.train.Checkpoint(student=at_best).restore(str(model_dir / "checkpoints" / f"ckpt-{best_step}")).expect_partial()
    for first, second in zip(saved.get_weights(), at_best.get_weights()):
        np.testing.assert_array_equal(first, second)
    assert independent_top1(saved, evaluation) == (pytest.approx(best["top1"]), best["eval_images"])
    served = tf.saved_model.load(str(model_dir / "best" / "saved_model"))
    pixels = np.stack([record_pixels.eval_view(record, 32) for record in records.read_records(evaluation)])
    np.testing.assert_allclose(served.serve(tf.constant(pixels)).numpy(), saved.predict(pixels, verbose=0),
                               rtol=1e-5, atol=1e-5)
    # The final top-1 is the last student's, independently too.
    assert independent_top1(keras.saving.load_model(model_dir / "student.keras"), evaluation)[0] == \
        pytest.approx(summary["top1"])


@pytest.mark.slow
def test_two_logical_devices_count_what_one_device_counts(record_globs, tmp_path):
    """10 labelled of 14 records at 2 per replica: 7 batches, so one replica gets an empty one at the end."""
    _, evaluation = record_globs
    request = {"mode": "eval_counts", "eval_pattern": evaluation, "eval_batch_size": 4, "seed": 3,
               "num_classes": fixtures.NUM_CLASSES, "out": str(tmp_path / "counts.json"),
               "weights_out": str(tmp_path / "weights.npz")}
    result = subprocess.run([sys.executable, HELPER, json.dumps(request)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"))
    assert result.returncode == 0, result.stderr[-4000:]
    counts = json.load(open(tmp_path / "counts.json"))
    assert counts["one"]["replicas"] == 1 and counts["two"]["replicas"] == 2
    assert {key: counts["two"][key] for key in ("top1", "top5", "images")} == \
        {key: counts["one"][key] for key in ("top1", "top5", "images")}
    model = students.build_student("small_cnn", 0.25, 32, fixtures.NUM_CLASSES)
    with np.load(tmp_path / "weights.npz") as arrays:
        model.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
    assert independent_top1(model, evaluation) == (pytest.approx(counts["one"]["top1"]), counts["one"]["images"])


def test_with_ema_the_evaluations_and_best_are_of_the_averaged_weights(record_globs, tmp_path):
    """--ema_decay exports the average: the evaluations during training, best/ and the final top-1 are of it too."""
    train, evaluation = record_globs
    model_dir = tmp_path / "ema"
    config = TrainConfig(train_pattern=train, model_dir=str(model_dir), student="small_cnn", width=0.25, image_size=32,
                         batch_size=4, steps=4, learning_rate=0.3, checkpoint_every=0, log_every=4, temperature=2.0,
                         shuffle_buffer=16, eval_pattern=evaluation, eval_every=2, eval_batch_size=4, ema_decay=0.5)
    _, summary = loop.train_student(config)
    exported = keras.saving.load_model(model_dir / "student.keras")
    assert independent_top1(exported, evaluation) == (pytest.approx(summary["top1"]), summary["eval_images"])
    best = json.load(open(model_dir / "best" / "best.json"))
    assert independent_top1(keras.saving.load_model(model_dir / "best" / "student.keras"), evaluation)[0] == \
        pytest.approx(best["top1"])
    if best["step"] == 4:  # the last step's average is the exported student
        for first, second in zip(keras.saving.load_model(model_dir / "best" / "student.keras").get_weights(),
                                 exported.get_weights()):
            np.testing.assert_array_equal(first, second)
