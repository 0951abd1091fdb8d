"""A distillation run (what `distillery-train` does): our own tf.distribute loop, not Keras fit.

Keras 3 `fit` fails under MultiWorkerMirroredStrategy in TF 2.21 (docs/decisions/001-own-distribution-loop.md),
so a run is a task and the one loop: `trainer.task.DistillationTask` builds the student, the distributed
inputs and the per-replica train step (strategy.run in a tf.function; losses summed and divided by the
*global* batch, so N replicas take the same step as one replica with the whole batch, tested with two
logical CPU devices) and the final evaluation; `trainer.driver.run_steps` steps it, logs, writes
TensorBoard scalars and runs the hooks (checkpointing is one, trainer/checkpointing.py; evaluation every
--eval_every steps another, trainer/eval_hook.py). This module checks the inputs and that --model_dir can be
written first, resumes from the latest checkpoint only when the run's settings match (trainer/resume.py;
--overwrite starts over), and writes the outputs, each under a temporary name renamed into place
(trainer/export.py, distillery/atomic_files.py).

Offline mode reads the teacher distribution of the replayed view from the records; online mode
(`teacher=SPEC`, the baseline offline mode is measured against) runs the teacher inside the step on
the same view, cropped at the teacher's input size. Only the student's variables are trained.

Outputs in `model_dir`: `student.keras`, `saved_model/`, `summary.json`, `run_config.json` (the settings a
rerun is checked against), TensorBoard scalars under `logs/train` (and `logs/eval`), checkpoints under
`checkpoints/` (see trainer/checkpointing.py), with --eval_every the best top-1's student under `best/`,
and a log line per interval with images/s.

    python -c "from trainer import loop, train_config; print(loop.train(train_config.TrainConfig( \
train_pattern='records-*', model_dir='/tmp/run', student='mobilenet_v1', width=0.25, image_size=128, steps=100)))"
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras
import tensorflow as tf
from absl import logging

from distillery import atomic_files, records
from trainer import (
    bad_records,
    checkpointing,
    cluster_resolver,
    driver,
    eval_hook,
    export,
    loss_guard,
    precision,
    resume,
    students,
    task,
)
from trainer.ema import WeightAverage
from trainer.precision import PRECISIONS
from trainer.train_config import OPTIMIZERS, TrainConfig

STRATEGIES = ("default", "mirrored", "multi_worker")


class TrainInputError(ValueError):
    """Input the trainer refuses before training starts; the message names the flag and the file."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default: one device; mirrored: all local GPUs (or the CPU); multi_worker: the cluster in TF_CONFIG."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        cluster_resolver.set_tf_config_from_jobset()  # a JobSet pod: TF_CONFIG from its hostnames, when none is given
        if "TF_CONFIG" not in os.environ:
            logging.warning("--strategy=multi_worker without TF_CONFIG: running as a single worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name of a strategy (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    for kind, name in ((tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
                       (tf.distribute.MirroredStrategy, "MirroredStrategy"),
                       (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy")):
        if isinstance(strategy, kind):
            return name
    return "default"


def _check_records(flag: str, pattern: str) -> records.Survey:
    """Every file exists, holds records of this format version and one spec, and carries images."""
    try:
        paths = records.expand_paths(pattern)
        survey = records.survey(paths)
        first = next(records.read_records(paths[0], limit=1))
    except FileNotFoundError as error:
        raise TrainInputError(f"{flag}={pattern}: {error}") from None
    except records.RecordError as error:
        raise TrainInputError(f"{flag}: {error}") from None
    if not first.encoded_image and not first.image_path:
        raise TrainInputError(f"{flag}: {paths[0]}: record 0 ({first.image_id!r}) carries neither image bytes "
                              f"nor an image path; the trainer replays views of the stored image")
    return survey


def validate_inputs(config: TrainConfig, teacher_num_classes: int | None = None) -> records.Survey:
    """Checks the run's inputs before anything heavy happens; returns the training records' survey (their
    spec, and whether they store their images).

    Raises:
      TrainInputError: missing or empty record files, records of another format version or of mixed
        specs, records without images, or class counts that disagree (records, eval records,
        --num_classes, the teacher).
    """
    if config.student not in students.STUDENTS:
        raise TrainInputError(f"--student={config.student}: choose one of {', '.join(students.STUDENTS)}")
    if config.optimizer not in OPTIMIZERS:
        raise TrainInputError(f"--optimizer={config.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    for flag, value in (("--batch_size", config.batch_size), ("--steps", config.steps), ("--width", config.width),
                        ("--temperature", config.temperature), ("--log_every", config.log_every)):
        if value <= 0:
            raise TrainInputError(f"{flag} must be positive, got {value}")
    if not 0.0 <= config.alpha <= 1.0:
        raise TrainInputError(f"--alpha must be in [0, 1], got {config.alpha}")
    if config.mixed_precision not in PRECISIONS:
        raise TrainInputError(f"--mixed_precision={config.mixed_precision}: choose one of {', '.join(PRECISIONS)}")
    if not 0 <= config.warmup_steps < config.steps:
        raise TrainInputError(f"--warmup_steps must be in [0, --steps={config.steps}), got {config.warmup_steps}")
    if config.weight_decay < 0:
        raise TrainInputError(f"--weight_decay must be >= 0, got {config.weight_decay}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise TrainInputError(f"--label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise TrainInputError(f"--ema_decay must be in [0, 1), got {config.ema_decay}")
    if config.jit_compile and config.sync_batch_norm:
        # The synchronized batch norms all-reduce inside the forward pass: a cross-replica call (merge_call)
        # that tf.distribute refuses inside the XLA-compiled function ("merge_call called while defining a
        # new graph or a tf.function").
        raise TrainInputError("--jit_compile and --sync_batch_norm cannot be combined: the batch norms' "
                              "all-reduce would run inside the XLA-compiled pass, which tf.distribute refuses")
    if config.eval_every < 0:
        raise TrainInputError(f"--eval_every must be >= 0, got {config.eval_every}")
    if config.eval_every and not config.eval_pattern:
        raise TrainInputError(f"--eval_every={config.eval_every} needs --eval (the records to evaluate on)")
    if config.eval_pattern and config.eval_batch_size <= 0:
        raise TrainInputError(f"--eval_batch_size must be positive, got {config.eval_batch_size}")
    survey = _check_records("--train", config.train_pattern)
    spec = survey.spec
    if config.num_classes is not None and config.num_classes != spec.num_classes:
        raise TrainInputError(f"--train={config.train_pattern}: records have {spec.num_classes} classes, "
                              f"--num_classes={config.num_classes}")
    if config.eval_pattern:
        eval_spec = _check_records("--eval", config.eval_pattern).spec
        if eval_spec.num_classes != spec.num_classes:
            raise TrainInputError(f"--eval={config.eval_pattern}: records have {eval_spec.num_classes} classes, "
                                  f"the training records {spec.num_classes}")
    if teacher_num_classes is not None and teacher_num_classes != spec.num_classes:
        raise TrainInputError(f"--teacher={config.teacher}: the teacher has {teacher_num_classes} classes, "
                              f"the training records {spec.num_classes}")
    return survey


def distillation_task(config: TrainConfig, survey: records.Survey, teacher=None) -> task.DistillationTask:
    """The task of a training run: its student, records, loss, optimizer and evaluation settings."""
    spec = survey.spec
    return task.DistillationTask(
        train_pattern=config.train_pattern, image_size=config.image_size, global_batch_size=config.batch_size,
        alpha=config.alpha, temperature=config.temperature, student=config.student, width=config.width,
        num_classes=spec.num_classes, optimizer=config.optimizer, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
        mixed_precision=config.mixed_precision, jit_compile=config.jit_compile,
        sync_batch_norm=config.sync_batch_norm, teacher=teacher,
        spec=spec, images_stored=survey.images_stored, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
        eval_pattern=config.eval_pattern, eval_batch_size=config.eval_batch_size)


def _load_teacher(spec: str, trust_saved_model: bool = False):
    from distillery import teachers  # pylint: disable=import-outside-toplevel (only online mode needs it)

    return teachers.load_teacher(spec, trust_saved_model=trust_saved_model)


def train(config: TrainConfig, strategy: tf.distribute.Strategy | None = None, teacher=None,
          after_step: Callable[[int], None] | None = None) -> dict:
    """Runs `train_student` and returns its summary (what the entry point calls)."""
    return train_student(config, strategy, teacher, after_step)[1]


def train_student(config: TrainConfig, strategy: tf.distribute.Strategy | None = None, teacher=None,
                  after_step: Callable[[int], None] | None = None) -> tuple[keras.Model, dict]:
    """Distills a student from soft-label records (offline) or from a teacher run in the step (online).

    Args:
      config: the run (see TrainConfig).
      strategy: a tf.distribute strategy (None: the default one-device strategy).
      teacher: an already loaded teacher (`distillery.teachers.Teacher` or anything with `.num_classes`,
        `.input_size` and a traceable `__call__` from [N, H, W, 3] pixels to [N, C] logits); when None
        and `config.teacher` is set, that spec is loaded inside the strategy's scope.
      after_step: called with the step number after every step (tests use it to pace or kill a run); a
        `driver.StepCallback` hook, run before the checkpointing hook.

    Returns:
      (the trained student, under `strategy`'s variables; the summary also written to
      `model_dir/summary.json`). A rerun whose --steps is at or below the finished run's step changes
      nothing: it returns the restored student and the summary on disk, with `nothing_to_do` saying so.

    Raises:
      TrainInputError: bad input, before training starts (see validate_inputs), an unwritable
        --model_dir, or a rerun whose settings differ from the checkpointed run's (trainer/resume.py).
    """
    strategy = strategy or tf.distribute.get_strategy()
    survey = validate_inputs(config, teacher.num_classes if teacher is not None else None)
    spec = survey.spec
    if config.teacher and teacher is None:
        with strategy.scope():
            try:
                teacher = _load_teacher(config.teacher, config.trust_saved_model)
            except (FileNotFoundError, ValueError) as error:
                raise TrainInputError(f"--teacher={config.teacher}: {error}") from None
        if teacher.num_classes != spec.num_classes:
            raise TrainInputError(f"--teacher={config.teacher}: the teacher has {teacher.num_classes} classes, "
                                  f"the training records {spec.num_classes}")
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise TrainInputError(f"--batch_size={config.batch_size} must be a multiple of the {replicas} replicas")
    chief = checkpointing.is_chief(strategy)
    try:
        atomic_files.check_writable(config.model_dir, "--model_dir")
    except atomic_files.OutputFolderError as error:
        raise TrainInputError(str(error)) from None
    settings = resume.run_settings(config, survey, records.expand_paths(config.train_pattern))
    changes = []
    if config.overwrite:
        if chief:
            resume.clear(config.model_dir)
    else:
        try:
            changes = resume.check(config.model_dir, settings)
        except resume.ResumeRefusedError as error:
            raise TrainInputError(str(error)) from None
    output_dir = checkpointing.worker_output_dir(config.model_dir, strategy)
    keras.utils.set_random_seed(config.seed)
    distillation = distillation_task(config, survey, teacher)

    with strategy.scope():
        student = distillation.build_model()
        optimizer = distillation.create_optimizer(config.steps, student.trainable_variables)
        optimizer.build(student.trainable_variables)  # slots exist before a restore
        average = WeightAverage(student.trainable_variables, config.ema_decay) if config.ema_decay else None
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(student=student, optimizer=optimizer, step=step,
                                     **({"weight_average": average} if average is not None else {}))
    keeper = checkpointing.CheckpointKeeper(checkpoint, step, config.model_dir, output_dir, strategy,
                                            config.checkpoint_every, config.max_checkpoints)
    resumed_from = keeper.restore(from_checkpoint=not config.overwrite)
    finished = resume.finished_summary(config.model_dir) if resumed_from >= config.steps else None
    if finished is not None:
        message = (f"--model_dir={config.model_dir} is already trained to step {resumed_from} "
                   f"(--steps={config.steps}): nothing to do, its outputs are left as they are (a larger --steps "
                   f"trains longer, --overwrite starts over)")
        logging.warning(message)
        if not chief:
            checkpointing.remove_worker_dir(output_dir, config.model_dir)
        return student, dict(finished, nothing_to_do=message)
    if chief:
        resume.write(config.model_dir, settings)
    iterator = distillation.build_inputs(strategy, seed_offset=resumed_from)
    train_step = distillation.build_train_step(student, optimizer, strategy, step_counter=step, weight_average=average)

    writer = tf.summary.create_file_writer(os.path.join(output_dir, "logs", "train")) if chief else None
    logging.info("training %s (width %g, %dx%d, %d classes) for %d steps, global batch %d over %d replica(s) "
                 "(%d per replica), %s distillation, alpha %g, T %g", config.student, config.width, config.image_size,
                 config.image_size, spec.num_classes, config.steps, config.batch_size, replicas,
                 config.batch_size // replicas,
                 "online" if distillation.online else "offline", config.alpha, config.temperature)
    evaluation = _eval_hook(config, distillation, student, strategy, spec.num_classes, output_dir, chief, average)
    # Before the checkpointing hook: a non-finite loss or too many bad records stop the run before it saves.
    skipped = bad_records.BadRecordLimit(records.expand_paths(config.train_pattern), config.max_bad_fraction, writer)
    guards = [loss_guard.FiniteLoss(config.checkpoint_every, variables=student.weights), skipped]
    hooks = ([driver.StepCallback(after_step)] if after_step is not None else []) + guards + [keeper]
    hooks += [evaluation] if evaluation is not None else []
    totals = driver.run_steps(train_step, iterator, resumed_from, config.steps, batch_size=config.batch_size,
                              log_every=config.log_every, summarize=distillation.interval_terms, writer=writer, hooks=hooks)
    if average is not None:  # after the last checkpoint (which keeps the trained weights and the average apart)
        average.copy_to_model()  # the final evaluation and the exported student are the averaged weights

    summary = {
        "student": config.student, "width": config.width, "image_size": config.image_size,
        "num_classes": spec.num_classes, "mode": "online" if distillation.online else "offline",
        "teacher": list(getattr(teacher, "names", [config.teacher])) if distillation.online else None,
        "strategy": strategy_name(strategy), "replicas": replicas, "global_batch_size": config.batch_size,
        "steps": int(step.numpy()), "planned_steps": config.steps, "resumed_from_step": resumed_from,
        "changed_on_resume": changes,
        "optimizer_iterations": int(optimizer.iterations.numpy()), "loss_scale": precision.loss_scale(optimizer),
        "steps_per_second": totals.steps_per_second, "images_per_second": totals.images_per_second,
        "alpha": config.alpha, "temperature": config.temperature, "loss": totals.terms,
        "record_spec": dataclasses.asdict(spec), "skipped": skipped.skipped(),
    }
    if config.eval_pattern:
        result = evaluation.results.get(summary["steps"]) if evaluation is not None else None
        if result is None:
            result = distillation.evaluate(student, strategy)
        summary.update(top1=result["top1"], top5=result["top5"], eval_images=result["images"])
        logging.info("eval: top-1 %s, top-5 %s on %d images", result["top1"], result["top5"], result["images"])
    if evaluation is not None:
        summary.update(eval_every=config.eval_every, best=eval_hook.read_best(output_dir))
    save_outputs(student, config, spec.num_classes, output_dir, summary)
    for summary_writer in (writer, evaluation.writer if evaluation is not None else None):
        if summary_writer is not None:
            summary_writer.close()
    if not chief:
        checkpointing.remove_worker_dir(output_dir, config.model_dir)
    return student, summary


def _eval_hook(config: TrainConfig, distillation: task.DistillationTask, student: keras.Model,
               strategy: tf.distribute.Strategy, num_classes: int, output_dir: str, chief: bool,
               average: WeightAverage | None = None) -> eval_hook.EvalHook | None:
    """With --eval_every: the hook that evaluates on every replica, writes logs/eval and (chief) keeps best/.

    With --ema_decay it evaluates and exports the averaged weights, what the run exports at its end (so
    the last step's evaluation is the final one), and puts the trained weights back after.
    """
    if not config.eval_every:
        return None
    best = None
    if chief:
        best = eval_hook.BestExport(output_dir, config.eval_pattern, lambda: export.exportable_student(
            student, config.student, config.width, config.image_size, num_classes))
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "logs", "eval")) if chief else None
    variables = student.trainable_variables
    return eval_hook.EvalHook(
        lambda: _with_averaged_weights(average, variables, lambda: distillation.evaluate(student, strategy)),
        config.eval_every, writer, best_top1=best.previous_top1() if best is not None else None,
        on_best=(lambda step, result: _with_averaged_weights(average, variables, lambda: best.export(step, result)))
        if best is not None else None)


def _with_averaged_weights(average: WeightAverage | None, variables: list, function: Callable):
    """`function()` with the averaged weights in `variables` (none: as they are), then the trained ones back."""
    if average is None:
        return function()
    trained = [tf.identity(tf.convert_to_tensor(variable)) for variable in variables]
    average.copy_to_model()
    try:
        return function()
    finally:
        for variable, value in zip(variables, trained):
            variable.assign(value)


def save_outputs(student: keras.Model, config: TrainConfig, num_classes: int, output_dir: str, summary: dict) -> None:
    """Writes student.keras, saved_model/ and summary.json into `output_dir`, each under a temporary name
    renamed into place once all are written (summary.json last; trainer/export.py).

    The exported model is a fresh float32 student outside any strategy scope with the trained weights,
    so it loads and converts to TFLite without the strategy that trained it.
    """
    exported = export.exportable_student(student, config.student, config.width, config.image_size, num_classes)
    summary["outputs"] = {"keras": os.path.join(config.model_dir, "student.keras"),
                          "saved_model": os.path.join(config.model_dir, "saved_model"),
                          "run_config": os.path.join(config.model_dir, resume.RUN_CONFIG)}
    if config.eval_every:
        summary["outputs"]["best"] = os.path.join(config.model_dir, eval_hook.BEST_DIR)
    export.write_student_files(exported, output_dir, "summary.json", summary)
    logging.info("wrote %s", output_dir)
