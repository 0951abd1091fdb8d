"""The training recipe settings: warmup, decoupled weight decay, label smoothing, EMA, mixed precision, XLA, sync BN.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_trainer_recipe.py
"""

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import trainer_fixtures as fixtures

from trainer import losses, resume, schedules, students, task, weight_decay
from trainer.train_config import TrainConfig


def test_warmup_rises_linearly_to_the_peak_then_decays_by_cosine_over_the_rest():
    peak, steps, warmup = 0.4, 100, 10
    schedule = schedules.warmup_cosine(peak, steps, warmup)
    for step in (0, 1, 5, 9, 10, 11, 40, 55, 99, 100):
        if step < warmup:
            expected = peak * step / warmup
        else:
            expected = peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-7), step
    plain = schedules.warmup_cosine(peak, steps, 0)
    assert float(plain(0)) == pytest.approx(peak) and float(plain(50)) == pytest.approx(peak / 2, rel=1e-5)
    with pytest.raises(ValueError):
        schedules.warmup_cosine(peak, steps, steps)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_weight_decay_shrinks_kernels_by_lr_times_wd_and_leaves_batch_norm_and_biases(name):
    keras.utils.set_random_seed(0)
    student = students.build_student("mobilenet_v1", 0.25, 32, fixtures.NUM_CLASSES)
    learning_rate, decay = 0.1, 0.05
    distillation = task.DistillationTask("unused", 32, 4, 0.5, 2.0, optimizer=name, learning_rate=learning_rate,
                                         weight_decay=decay)
    optimizer = distillation.create_optimizer(10, student.trainable_variables)
    optimizer.build(student.trainable_variables)
    before = {variable.path: np.array(variable) for variable in student.trainable_variables}
    optimizer.apply_gradients([(tf.zeros_like(variable), variable) for variable in student.trainable_variables])
    kernels = {variable.path for variable in weight_decay.decayed(student.trainable_variables)}
    assert any("bn" in path and path.endswith("gamma") for path in before)
    assert any(path.endswith("bias") for path in before)
    for variable in student.trainable_variables:
        old = before[variable.path]
        if variable.path in kernels:
            np.testing.assert_allclose(np.array(variable), old - learning_rate * decay * old, rtol=1e-6, atol=1e-9)
        else:
            np.testing.assert_array_equal(np.array(variable), old, err_msg=variable.path)
    assert kernels and len(kernels) < len(before)


def test_label_smoothing_applies_to_the_hard_label_term_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    teacher = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
    labels = np.array([0, 3, -1, 4])
    alpha, temperature, smoothing = 0.3, 2.0, 0.1

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    targets = np.full((4, 5), smoothing / 5)
    targets[np.arange(4), np.maximum(labels, 0)] += 1 - smoothing
    cross_entropy = -(targets * log_softmax(logits)).sum(-1) * (labels >= 0)
    kl = (teacher * (np.log(teacher) - log_softmax(logits / temperature))).sum(-1)
    expected = alpha * cross_entropy + (1 - alpha) * temperature**2 * kl
    got = losses.distillation_loss(labels, logits, teacher, alpha, temperature, label_smoothing=smoothing)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    plain = losses.distillation_loss(labels, logits, teacher, alpha, temperature)
    assert got.numpy()[2] == pytest.approx(plain.numpy()[2])  # an unlabeled example: the same soft term
    assert not np.allclose(got.numpy()[[0, 1, 3]], plain.numpy()[[0, 1, 3]])


def test_the_recipe_settings_that_change_the_weights_are_checked_on_resume():
    for name in ("weight_decay", "label_smoothing", "ema_decay", "mixed_precision"):
        assert name in resume.FIXED, name
    assert "warmup_steps" in resume.MAY_CHANGE
    older = {"config": {"student": "small_cnn"}}  # a run_config.json written before these fields existed
    new = {"config": {"student": "small_cnn", "weight_decay": 0.0, "label_smoothing": 0.0}, "classes": None,
           "record_spec": None, "train_files": []}
    assert resume.differences({**older, "classes": None, "record_spec": None}, new) == []
    changed = {**new, "config": {**new["config"], "weight_decay": 0.05}}
    assert any("--weight_decay" in line for line in resume.differences(new, changed))
    assert TrainConfig.__dataclass_fields__["weight_decay"].default == 0.0


@pytest.fixture(scope="module")
def record_glob(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    return fixtures.write_tiny_records(directory, fixtures.tiny_teacher_model(), num_files=2, per_file=8,
                                       num_views=2, unlabeled_every=3)


def _config(train_glob, model_dir, **overrides):
    values = dict(train_pattern=train_glob, model_dir=str(model_dir), student="small_cnn", width=0.25, image_size=32,
                  batch_size=4, steps=4, learning_rate=0.1, checkpoint_every=0, log_every=2, temperature=2.0,
                  shuffle_buffer=16)
    values.update(overrides)
    return TrainConfig(**values)


def _train_recording(config, monkeypatch):
    """Trains; returns (the summary, the student's trainable weights at build and after each step)."""
    from trainer import loop

    built, recorded = [], []
    build_model = task.DistillationTask.build_model

    def recording_build_model(self):
        model = build_model(self)
        built.append(model)
        return model

    monkeypatch.setattr(task.DistillationTask, "build_model", recording_build_model)

    def after_step(step):
        del step
        recorded.append([np.array(variable) for variable in built[-1].trainable_variables])

    initial = None
    original_restore = loop.checkpointing.CheckpointKeeper.restore

    def recording_restore(self, from_checkpoint=True):
        nonlocal initial
        restored = original_restore(self, from_checkpoint)
        initial = [np.array(variable) for variable in built[-1].trainable_variables]
        return restored

    monkeypatch.setattr(loop.checkpointing.CheckpointKeeper, "restore", recording_restore)
    summary = loop.train(config, after_step=after_step)
    return summary, initial, recorded


def test_the_exported_student_is_the_ema_of_the_weights_after_each_step_and_a_resume_continues_it(
        record_glob, tmp_path, monkeypatch):
    decay = 0.6
    config = _config(record_glob, tmp_path / "ema", steps=2, ema_decay=decay, checkpoint_every=1)
    _, initial, first = _train_recording(config, monkeypatch)
    summary, _, second = _train_recording(dataclasses.replace(config, steps=4), monkeypatch)
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2
    average = initial
    for weights in first + second:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights)]
    exported = keras.saving.load_model(str(tmp_path / "ema" / "student.keras"))
    assert len(exported.trainable_variables) == len(average)
    for variable, expected, last in zip(exported.trainable_variables, average, second[-1]):
        np.testing.assert_allclose(np.array(variable), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected, last)  # not simply the last weights
    refused = dataclasses.replace(config, steps=6, ema_decay=0.9)
    from trainer import loop
    with pytest.raises(loop.TrainInputError, match="--ema_decay"):
        loop.train(refused)


def test_a_bfloat16_run_trains_and_its_float32_export_converts_to_int8_tflite(record_glob, tmp_path):
    from compress import quantize
    from trainer import loop

    config = _config(record_glob, tmp_path / "bf16", mixed_precision="bfloat16", steps=3)
    student, summary = loop.train_student(config)
    assert keras.config.dtype_policy().name == "float32"  # the policy was set only while building the student
    assert student.layers[-1].compute_dtype == "bfloat16" and student.layers[-1].kernel.dtype == "float32"
    assert np.isfinite(summary["loss"]["loss"]) and summary["loss_scale"] is None  # bfloat16 needs no loss scaling
    keras.utils.set_random_seed(config.seed)
    initial = task.DistillationTask(record_glob, 32, 4, 0.5, 2.0, student="small_cnn", width=0.25,
                                    num_classes=fixtures.NUM_CLASSES).build_model()
    exported = keras.saving.load_model(str(tmp_path / "bf16" / "student.keras"))
    assert all(weight.dtype == np.float32 for weight in exported.get_weights())
    assert exported.layers[-1].compute_dtype == "float32"
    assert any(not np.allclose(a, b) for a, b in zip(exported.get_weights(), initial.get_weights()))
    calibration = quantize.calibration_images(record_glob, (32, 32), 4)
    flatbuffer = quantize.convert(exported, "int8", calibration)
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inputs["dtype"] == np.uint8
    interpreter.set_tensor(inputs["index"], np.full(inputs["shape"], 128, np.uint8))
    interpreter.invoke()
    assert interpreter.get_tensor(outputs["index"]).shape == (1, fixtures.NUM_CLASSES)


def test_a_float16_run_trains_with_loss_scaling(record_glob, tmp_path):
    from trainer import loop

    config = _config(record_glob, tmp_path / "fp16", mixed_precision="float16", steps=3, weight_decay=0.01)
    student, summary = loop.train_student(config)
    assert np.isfinite(summary["loss"]["loss"]) and summary["optimizer_iterations"] == 3
    assert student.layers[-1].compute_dtype == "float16"
    # Dynamic loss scaling ran: the scale starts at 2**15 and only halves (overflow) or doubles (after 2,000
    # good steps), so after 3 steps it is 2**15 divided by 2**(steps that overflowed).
    assert summary["loss_scale"] in [2.0 ** power for power in range(12, 16)]
    exported = keras.saving.load_model(str(tmp_path / "fp16" / "student.keras"))
    assert all(weight.dtype == np.float32 for weight in exported.get_weights())


class _ThreeReplicas:
    """Stands in for a strategy of three replicas: the batch check comes before anything uses the strategy."""

    num_replicas_in_sync = 3


def test_a_global_batch_that_does_not_divide_by_the_replicas_is_refused(record_glob, tmp_path):
    from trainer import loop

    with pytest.raises(loop.TrainInputError, match="--batch_size=4 must be a multiple of the 3 replicas"):
        loop.train_student(_config(record_glob, tmp_path / "uneven"), strategy=_ThreeReplicas())
    assert not (tmp_path / "uneven").exists()


def test_the_per_replica_batch_is_logged_at_start(record_glob, tmp_path, monkeypatch):
    from trainer import loop

    lines = []
    monkeypatch.setattr(loop.logging, "info", lambda message, *args: lines.append(message % args if args else message))
    loop.train(_config(record_glob, tmp_path / "logged", steps=1))
    assert any("global batch 4 over 1 replica(s) (4 per replica)" in line for line in lines), lines[:3]


def _xla_compiled_calls(graph) -> int:
    """Calls in `graph` (and the functions it calls) to a function marked for XLA (tf.function(jit_compile=True))."""
    found, seen, pending = 0, set(), [graph]
    while pending:
        current = pending.pop()
        for operation in current.get_operations():
            try:
                found += bool(operation.get_attr("_XlaMustCompile"))
            except ValueError:
                pass
        for name, function in getattr(current, "_functions", {}).items():
            if name not in seen:
                seen.add(name)
                pending.append(function.graph if hasattr(function, "graph") else function)
    return found


@pytest.mark.parametrize("student,steps", [("small_cnn", 3), ("mobilenet_v2", 1)])
def test_jit_compile_runs_the_forward_and_backward_pass_in_xla_to_the_weights_of_the_plain_step(
        record_glob, student, steps):
    """Steps with and without --jit_compile from the same initialization on the same batches: the same losses,
    every weight moved, and the XLA run's step graph really calls a function XLA must compile (the plain one
    none). small_cnn (no batch norm, no dropout) moves every array alike over 3 steps. mobilenet_v2 (no
    dropout: XLA draws its random stream differently) takes one step of 16 images: its batch-norm statistics
    (the forward pass) move alike array by array, and its whole weight update agrees to 20% in norm. The
    update is not compared array by array: on some batches XLA's backward pass through the 16-value batch
    norms of the last layers differs by 2-7% of the update, on others by 1e-4 (docs/train.md)."""
    initial, weights, compiled_calls, losses_seen = {}, {}, {}, {}
    same_batches = None
    for jit in (False, True):
        distillation = task.DistillationTask(record_glob, 32, 4 if student == "small_cnn" else 16, 0.5, 2.0,
                                             student=student, width=0.25, num_classes=fixtures.NUM_CLASSES,
                                             shuffle_buffer=16, jit_compile=jit)
        if same_batches is None:  # the training input reads files in any order: both runs take these batches
            stream = distillation.build_inputs()
            batches = [tf.data.Dataset.from_tensors(next(stream)) for _ in range(steps)]
            same_batches = batches[0]
            for batch in batches[1:]:
                same_batches = same_batches.concatenate(batch)
        keras.utils.set_random_seed(0)
        model = distillation.build_model()
        initial[jit] = [np.array(weight) for weight in model.get_weights()]
        optimizer = distillation.create_optimizer(10, model.trainable_variables)
        train_step = distillation.build_train_step(model, optimizer)
        iterator = iter(same_batches)
        losses_seen[jit] = [float(train_step(iterator)["loss"]) for _ in range(steps)]
        compiled_calls[jit] = _xla_compiled_calls(train_step.get_concrete_function(iter(same_batches)).graph)
        weights[jit] = [np.array(weight) for weight in model.get_weights()]
        paths = [weight.path for weight in model.weights]
    assert compiled_calls == {False: 0, True: 1}
    assert all(np.isfinite(losses_seen[True]))
    np.testing.assert_allclose(losses_seen[True], losses_seen[False], rtol=1e-3)
    for start, other_start in zip(initial[False], initial[True]):
        np.testing.assert_array_equal(start, other_start)
    moved = 0
    for path, start, plain, compiled in zip(paths, initial[False], weights[False], weights[True]):
        moved += np.abs(plain - start).max() > 0
        if student == "small_cnn" or "moving_" in path:
            assert fixtures.moved_alike(start, plain, compiled), path  # XLA orders its sums differently
    assert moved == len(initial[False])  # every weight (and statistic) took part in the step
    plain_update = np.concatenate([(plain - start).ravel() for start, plain in zip(initial[False], weights[False])])
    compiled_update = np.concatenate([(compiled - start).ravel()
                                      for start, compiled in zip(initial[False], weights[True])])
    assert np.linalg.norm(compiled_update - plain_update) <= 0.2 * np.linalg.norm(plain_update)


def test_jit_compile_with_sync_batch_norm_is_refused_before_anything_is_written(record_glob, tmp_path):
    from trainer import loop

    config = _config(record_glob, tmp_path / "both", jit_compile=True, sync_batch_norm=True)
    with pytest.raises(loop.TrainInputError, match="--jit_compile and --sync_batch_norm cannot be combined"):
        loop.train(config)
    assert not (tmp_path / "both").exists()
