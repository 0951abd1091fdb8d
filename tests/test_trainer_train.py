"""The training loop: online vs offline gradients, only the student trains, outputs, bad input, SIGKILL resume."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import trainer_fixtures as fixtures

from distillery import records, teachers
from trainer import data, loop, losses, students
from trainer.train_config import TrainConfig

HELPER = os.path.join(os.path.dirname(__file__), "trainer_subprocess_main.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPERATURE = 2.0


@pytest.fixture(scope="module")
def teacher_model():
    return fixtures.tiny_teacher_model()


@pytest.fixture(scope="module")
def full_logit_glob(teacher_model, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("full"))
    return fixtures.write_tiny_records(directory, teacher_model, num_files=2, per_file=8, num_views=2,
                                       unlabeled_every=3)


@pytest.fixture(scope="module")
def eval_glob(teacher_model, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("eval"))
    return fixtures.write_tiny_records(directory, teacher_model, num_files=1, per_file=10, num_views=1,
                                       prefix="eval", first_index=500)


def _config(train_glob, model_dir, **overrides):
    values = dict(train_pattern=train_glob, model_dir=str(model_dir), student="small_cnn", width=0.25, image_size=32,
                  batch_size=4, steps=4, learning_rate=0.1, checkpoint_every=0, log_every=2, temperature=TEMPERATURE,
                  shuffle_buffer=16)
    values.update(overrides)
    return TrainConfig(**values)


def test_full_logit_records_give_the_online_teachers_gradients(teacher_model, full_logit_glob):
    teacher = teachers.keras_model_teacher(teacher_model, "tiny")
    dataset = data.make_dataset(full_logit_glob, 32, 8, training=True, seed=1, shuffle_buffer=64, temperature=TEMPERATURE,
                                teacher_image_size=teacher.input_size)
    images, targets = next(iter(dataset))
    keras.utils.set_random_seed(0)
    student = students.build_student("small_cnn", 0.5, 32, fixtures.NUM_CLASSES)
    online_probabilities = tf.nn.softmax(teacher(targets["teacher_images"]) / TEMPERATURE)

    def gradients(teacher_probabilities):
        with tf.GradientTape() as tape:
            per_example = losses.distillation_loss(targets["labels"], student(images, training=True),
                                                   teacher_probabilities, 0.3, TEMPERATURE)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=8)
        return tape.gradient(loss, student.trainable_variables)

    np.testing.assert_allclose(targets["teacher_probabilities"].numpy(), online_probabilities.numpy(),
                               rtol=1e-4, atol=1e-6)
    offline, online = gradients(targets["teacher_probabilities"]), gradients(online_probabilities)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in offline) > 1e-4
    for first, second in zip(offline, online):
        np.testing.assert_allclose(first.numpy(), second.numpy(), rtol=1e-3, atol=1e-6)


def test_online_training_changes_only_the_student_and_writes_every_output(teacher_model, full_logit_glob,
                                                                           eval_glob, tmp_path):
    teacher_before = [w.copy() for w in teacher_model.get_weights()]
    teacher = teachers.keras_model_teacher(teacher_model, "tiny")
    config = _config(full_logit_glob, tmp_path / "online", eval_pattern=eval_glob, teacher="tiny")
    keras.utils.set_random_seed(config.seed)
    initial = students.build_student("small_cnn", 0.25, 32, fixtures.NUM_CLASSES).get_weights()
    student, summary = loop.train_student(config, teacher=teacher)

    for before, after in zip(teacher_before, teacher_model.get_weights()):
        np.testing.assert_array_equal(before, after)
    trained = student.get_weights()
    assert all(a.shape == b.shape for a, b in zip(initial, trained))
    assert all(not np.array_equal(a, b) for a, b in zip(initial, trained))  # every student variable moved

    assert summary["mode"] == "online" and summary["steps"] == 4 and summary["optimizer_iterations"] == 4
    assert summary["teacher"] == ["tiny"] and summary["eval_images"] == 10
    on_disk = json.load(open(tmp_path / "online" / "summary.json"))
    assert on_disk["steps"] == 4 and set(on_disk["loss"]) >= {"loss", "cross_entropy", "kl_divergence"}
    assert on_disk["images_per_second"] > 0

    # The final top-1/top-5 equal a direct evaluation of the saved model on the centre crops.
    saved = keras.saving.load_model(tmp_path / "online" / "student.keras")
    eval_records = list(records.read_records(eval_glob))
    images = np.concatenate([b[0].numpy() for b in data.make_dataset(eval_glob, 32, 4, training=False)])
    logits = saved.predict(images, verbose=0)
    labels = np.array([r.label for r in eval_records])
    assert summary["top1"] == pytest.approx(np.mean(np.argmax(logits, 1) == labels))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert summary["top5"] == pytest.approx(np.mean([label in row for label, row in zip(labels, top5)]))
    np.testing.assert_allclose(logits, student.predict(images, verbose=0), rtol=1e-5, atol=1e-5)

    # The SavedModel serves the same logits; TensorBoard scalars were written.
    exported = tf.saved_model.load(str(tmp_path / "online" / "saved_model"))
    served = exported.serve(tf.constant(images))
    np.testing.assert_allclose(served.numpy(), logits, rtol=1e-5, atol=1e-5)
    scalars = {}
    for event_file in (tmp_path / "online" / "logs" / "train").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    assert [step for step, _ in scalars["loss"]] == [2, 4]  # --log_every=2 over 4 steps
    assert scalars["loss"][-1][1] == pytest.approx(summary["loss"]["loss"])
    assert {"cross_entropy", "kl_divergence", "images_per_second"} <= set(scalars)


def _tampered_version_file(path):
    """A record file whose records say format version 99."""
    record = next(records.read_records(str(path) + "-src"))
    example = tf.train.Example.FromString(records.encode(record))
    example.features.feature["distillery/version"].int64_list.value[0] = 99
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example.SerializeToString())


def test_bad_input_is_refused_before_training(teacher_model, full_logit_glob, tmp_path):
    with pytest.raises(loop.TrainInputError, match=r"--train=.*nothing-\*.*no soft-label record files match"):
        loop.validate_inputs(_config(str(tmp_path / "nothing-*"), tmp_path / "m"))
    empty = tmp_path / "empty-00000"
    empty.write_bytes(b"")
    with pytest.raises(loop.TrainInputError, match=f"--train: {empty}: holds no records"):
        loop.validate_inputs(_config(str(empty), tmp_path / "m"))
    source = fixtures.write_tiny_records(str(tmp_path / "v"), teacher_model, num_files=1, per_file=1, prefix="src")
    os.rename(source.replace("*", "00000-of-00001"), str(tmp_path / "old") + "-src")
    _tampered_version_file(tmp_path / "old")
    with pytest.raises(loop.TrainInputError, match=f"{tmp_path / 'old'}: record 0: record format version 99"):
        loop.validate_inputs(_config(str(tmp_path / "old"), tmp_path / "m"))
    with pytest.raises(loop.TrainInputError, match="records have 5 classes, --num_classes=10"):
        loop.validate_inputs(_config(full_logit_glob, tmp_path / "m", num_classes=10))
    other = fixtures.write_tiny_records(str(tmp_path / "c7"), fixtures.tiny_teacher_model(num_classes=7),
                                        num_files=1, per_file=2, prefix="eval")
    with pytest.raises(loop.TrainInputError, match="--eval=.*records have 7 classes, the training records 5"):
        loop.validate_inputs(_config(full_logit_glob, tmp_path / "m", eval_pattern=other))
    with pytest.raises(loop.TrainInputError, match="the teacher has 7 classes, the training records 5"):
        loop.validate_inputs(_config(full_logit_glob, tmp_path / "m", teacher="t"), teacher_num_classes=7)
    seven_class_teacher = str(tmp_path / "teacher7.keras")
    fixtures.tiny_teacher_model(num_classes=7).save(seven_class_teacher)
    with pytest.raises(loop.TrainInputError, match="--teacher=.*teacher7.keras: the teacher has 7 classes"):
        loop.train(_config(full_logit_glob, tmp_path / "m", teacher=seven_class_teacher))
    # Mixed specs in one glob name the file that disagrees.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    os.symlink(full_logit_glob.replace("*", "00000-of-00002"), mixed / "a")
    os.symlink(other.replace("*", "00000-of-00001"), mixed / "b")
    with pytest.raises(loop.TrainInputError, match=f"{mixed / 'b'}: records of .* do not match"):
        loop.validate_inputs(_config(str(mixed / "*"), tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")  # nothing was written


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2",
                CUDA_VISIBLE_DEVICES="-1")


def test_command_line_reports_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer.train", f"--train={tmp_path}/missing-*",
                             f"--model_dir={tmp_path}/m", "--student=small_cnn", "--width=0.25", "--image_size=32"],
                            env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"distillery-train: error: --train={tmp_path}/missing-*: no soft-label record files match" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_from_the_last_checkpoint(full_logit_glob, tmp_path):
    model_dir = tmp_path / "killed"
    config = dict(train_pattern=full_logit_glob, model_dir=str(model_dir), student="small_cnn", width=0.25,
                  image_size=32, batch_size=4, steps=30, learning_rate=0.1, checkpoint_every=5, log_every=5,
                  temperature=TEMPERATURE, shuffle_buffer=16)
    request = {"mode": "run", "config": config, "weights_out": str(tmp_path / "w.npz"), "sleep": 0.3}
    process = subprocess.Popen([sys.executable, HELPER, json.dumps(request)], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    index = model_dir / "checkpoints" / "ckpt-10.index"
    deadline = time.time() + 240
    while not index.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert index.exists(), "no checkpoint at step 10"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    killed_at = int(latest.rsplit("-", 1)[1])
    assert 10 <= killed_at < 30 and not (model_dir / "summary.json").exists()
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == killed_at

    request["sleep"] = 0.0
    result = subprocess.run([sys.executable, HELPER, json.dumps(request)], env=_env(), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resuming at step {killed_at}" in result.stderr
    summary = json.load(open(model_dir / "summary.json"))
    assert summary["resumed_from_step"] == killed_at and summary["steps"] == 30
    # the optimizer's own iteration counter came back from the checkpoint too (not restarted at 0)
    assert summary["optimizer_iterations"] == 30
