"""The distillation loop: our own tf.distribute loop (strategy.run in a tf.function), not Keras fit.

Keras 3 `fit` fails under MultiWorkerMirroredStrategy in TF 2.21 (docs/decisions/001-own-distribution-loop.md), so the train
step is written for one replica (tensorflow/models base_task style): per-example losses from
`trainer.losses.distillation_loss`, summed and divided by the *global* batch size; the Keras optimizer
all-reduces (sums) the replicas' gradients, so N replicas take the same step as one replica with the
whole batch (tested with two logical CPU devices).

Offline mode reads the teacher distribution of the replayed view from the records; online mode
(`teacher=SPEC`, the baseline offline mode is measured against) runs the teacher inside the step on
the same view, cropped at the teacher's input size. Only the student's variables are trained.

Outputs in `model_dir`: `student.keras`, `saved_model/`, `summary.json`, TensorBoard scalars under
`logs/`, checkpoints under `checkpoints/` (see trainer/checkpointing.py), and a log line per interval
with images/s.

    python -c "from trainer import loop, train_config; print(loop.train(train_config.TrainConfig( \
train_pattern='records-*', model_dir='/tmp/run', student='mobilenet_v1', width=0.25, image_size=128, steps=100)))"
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from distillery import records
from trainer import checkpointing, data, losses, students
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


def _check_records(flag: str, pattern: str) -> records.RecordSpec:
    """Every file exists, holds records of this format version and one spec, and carries images."""
    try:
        paths = records.expand_paths(pattern)
        spec = records.read_spec(paths)
        first = next(records.read_records(paths[0], limit=1))
    except FileNotFoundError as error:
        raise TrainInputError(f"{flag}={pattern}: {error}") from None
    except records.RecordError as error:
        raise TrainInputError(f"{flag}: {error}") from None
    if not first.encoded_image and not first.image_path:
        raise TrainInputError(f"{flag}: {paths[0]}: record 0 ({first.image_id!r}) carries neither image bytes "
                              f"nor an image path; the trainer replays views of the stored image")
    return spec


def validate_inputs(config: TrainConfig, teacher_num_classes: int | None = None) -> records.RecordSpec:
    """Checks the run's inputs before anything heavy happens; returns the training records' spec.

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
    spec = _check_records("--train", config.train_pattern)
    if config.num_classes is not None and config.num_classes != spec.num_classes:
        raise TrainInputError(f"--train={config.train_pattern}: records have {spec.num_classes} classes, "
                              f"--num_classes={config.num_classes}")
    if config.eval_pattern:
        eval_spec = _check_records("--eval", config.eval_pattern)
        if eval_spec.num_classes != spec.num_classes:
            raise TrainInputError(f"--eval={config.eval_pattern}: records have {eval_spec.num_classes} classes, "
                                  f"the training records {spec.num_classes}")
    if teacher_num_classes is not None and teacher_num_classes != spec.num_classes:
        raise TrainInputError(f"--teacher={config.teacher}: the teacher has {teacher_num_classes} classes, "
                              f"the training records {spec.num_classes}")
    return spec


def make_optimizer(name: str, learning_rate: float, steps: int) -> keras.optimizers.Optimizer:
    """`name` (adam, or sgd with Nesterov momentum 0.9) with a cosine decay of `learning_rate` over
    `steps`; the trainer and the factorize job's fine-tuning share it."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)


def evaluate(student: keras.Model, pattern: str, image_size: int, batch_size: int = 100) -> dict:
    """Top-1/top-5 of `student` on the labeled records of `pattern` (centre crop), on this process alone.

    Returns:
      {'top1', 'top5', 'images'} over the records whose label is not -1.
    """
    dataset = data.make_dataset(pattern, image_size, batch_size, training=False)
    num_classes = int(student.outputs[0].shape[-1])

    @tf.function
    def batch_counts(images, labels):
        logits = student(images, training=False)
        labeled = labels >= 0
        safe = tf.where(labeled, labels, 0)
        top1 = tf.math.in_top_k(safe, logits, 1) & labeled
        top5 = tf.math.in_top_k(safe, logits, min(5, num_classes)) & labeled
        return [tf.reduce_sum(tf.cast(x, tf.int64)) for x in (top1, top5, labeled)]

    totals = np.zeros(3, np.int64)
    for images, targets in dataset:
        totals += np.array([x.numpy() for x in batch_counts(images, targets["labels"])])
    count = int(totals[2])
    return {"top1": totals[0] / count if count else None, "top5": totals[1] / count if count else None,
            "images": count}


def _load_teacher(spec: str):
    from distillery import teachers  # pylint: disable=import-outside-toplevel (only online mode needs it)

    return teachers.load_teacher(spec)


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
      after_step: called with the step number after every step (tests use it to pace or kill a run).

    Returns:
      (the trained student, under `strategy`'s variables; the summary also written to
      `model_dir/summary.json`).

    Raises:
      TrainInputError: bad input, before training starts (see validate_inputs).
    """
    strategy = strategy or tf.distribute.get_strategy()
    spec = validate_inputs(config, teacher.num_classes if teacher is not None else None)
    if config.teacher and teacher is None:
        with strategy.scope():
            try:
                teacher = _load_teacher(config.teacher)
            except (FileNotFoundError, ValueError) as error:
                raise TrainInputError(f"--teacher={config.teacher}: {error}") from None
        if teacher.num_classes != spec.num_classes:
            raise TrainInputError(f"--teacher={config.teacher}: the teacher has {teacher.num_classes} classes, "
                                  f"the training records {spec.num_classes}")
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise TrainInputError(f"--batch_size={config.batch_size} must be a multiple of the {replicas} replicas")
    chief = checkpointing.is_chief(strategy)
    output_dir = checkpointing.worker_output_dir(config.model_dir, strategy)
    keras.utils.set_random_seed(config.seed)

    with strategy.scope():
        student = students.build_student(config.student, config.width, config.image_size, spec.num_classes)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.steps)
        optimizer.build(student.trainable_variables)  # slots exist before a restore
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(student=student, optimizer=optimizer, step=step)
    keeper = checkpointing.CheckpointKeeper(checkpoint, step, config.model_dir, output_dir, strategy,
                                            config.checkpoint_every, config.max_checkpoints)
    resumed_from = keeper.restore()

    online = teacher is not None
    teacher_size = tuple(teacher.input_size) if online else None

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        # A resumed run reseeds the stream so it does not replay the examples of the first steps.
        return data.make_dataset(
            config.train_pattern, config.image_size, input_context.get_per_replica_batch_size(config.batch_size),
            training=True, seed=config.seed + resumed_from, spec=spec,
            temperature=None if online else config.temperature, teacher_image_size=teacher_size,
            shuffle_buffer=config.shuffle_buffer, input_context=input_context)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = make_train_step(student, optimizer, strategy, config.batch_size, config.alpha,
                                 config.temperature, teacher)

    @tf.function
    def distributed_step(dist_iterator):
        images, targets = next(dist_iterator)
        sums = train_step(images, targets)
        step.assign_add(1)
        return sums

    writer = tf.summary.create_file_writer(os.path.join(output_dir, "logs", "train")) if chief else None
    logging.info("training %s (width %g, %dx%d, %d classes) for %d steps, global batch %d over %d replica(s), "
                 "%s distillation, alpha %g, T %g", config.student, config.width, config.image_size,
                 config.image_size, spec.num_classes, config.steps, config.batch_size, replicas,
                 "online" if online else "offline", config.alpha, config.temperature)
    interval = _Interval()
    last_terms: dict = {}
    timing = {"start": None, "start_step": None}
    current = resumed_from
    while current < config.steps:
        sums = distributed_step(iterator)
        current += 1
        interval.add(sums)
        if current - resumed_from == 1:  # exclude the first step (tracing) from the throughput
            timing["start"], timing["start_step"] = time.perf_counter(), current
            interval.reset_clock()
        if current % config.log_every == 0 or current == config.steps:
            last_terms = interval.flush(current, config.steps, config.batch_size, writer)
        if after_step is not None:
            after_step(current)
        keeper.after_step(current)
    if resumed_from < config.steps and (not config.checkpoint_every or current % config.checkpoint_every):
        keeper.save()
    elapsed = time.perf_counter() - timing["start"] if timing["start"] is not None else 0.0
    timed_steps = current - timing["start_step"] if timing["start_step"] is not None else 0

    summary = {
        "student": config.student, "width": config.width, "image_size": config.image_size,
        "num_classes": spec.num_classes, "mode": "online" if online else "offline",
        "teacher": list(getattr(teacher, "names", [config.teacher])) if online else None,
        "strategy": strategy_name(strategy), "replicas": replicas, "global_batch_size": config.batch_size,
        "steps": int(step.numpy()), "planned_steps": config.steps, "resumed_from_step": resumed_from,
        "optimizer_iterations": int(optimizer.iterations.numpy()),
        "steps_per_second": timed_steps / elapsed if elapsed > 0 else None,
        "images_per_second": timed_steps * config.batch_size / elapsed if elapsed > 0 else None,
        "alpha": config.alpha, "temperature": config.temperature, "loss": last_terms,
        "record_spec": dataclasses.asdict(spec),
    }
    if config.eval_pattern:
        result = evaluate(student, config.eval_pattern, config.image_size, config.eval_batch_size)
        summary.update(top1=result["top1"], top5=result["top5"], eval_images=result["images"])
        logging.info("eval: top-1 %s, top-5 %s on %d images", result["top1"], result["top5"], result["images"])
    save_outputs(student, config, spec.num_classes, output_dir, summary)
    if writer is not None:
        writer.close()
    if not chief:
        checkpointing.remove_worker_dir(output_dir, config.model_dir)
    return student, summary


def make_train_step(student: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                    global_batch_size: int, alpha: float, temperature: float, teacher=None):
    """The per-replica step, run by `strategy.run`; returns the replicas' loss sums reduced (SUM).

    The returned function takes a distributed batch (images, targets) and must be called inside a
    tf.function. Gradients are taken with respect to the student's trainable variables only.
    """

    def replica_step(images, targets):
        labels = targets["labels"]
        if teacher is not None:
            teacher_logits = tf.stop_gradient(teacher(targets["teacher_images"]))
            teacher_probabilities = tf.nn.softmax(teacher_logits / temperature, axis=-1)
        else:
            teacher_probabilities = targets["teacher_probabilities"]
        with tf.GradientTape() as tape:
            student_logits = student(images, training=True)
            per_example = losses.distillation_loss(labels, student_logits, teacher_probabilities, alpha, temperature)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if student.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(student.losses))
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        cross_entropy, kl_divergence = losses.distillation_terms(labels, student_logits, teacher_probabilities,
                                                                 temperature)
        labeled = tf.cast(labels >= 0, tf.float32)
        correct = tf.cast(tf.math.in_top_k(tf.maximum(labels, 0), student_logits, 1), tf.float32) * labeled
        return {"loss": tf.reduce_sum(per_example), "cross_entropy": tf.reduce_sum(cross_entropy),
                "kl_divergence": tf.reduce_sum(kl_divergence), "labeled": tf.reduce_sum(labeled),
                "correct": tf.reduce_sum(correct), "examples": tf.cast(tf.shape(labels)[0], tf.float32)}

    def step(images, targets):
        per_replica = strategy.run(replica_step, args=(images, targets))
        return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for name, value in per_replica.items()}

    return step


class _Interval:
    """Loss sums and throughput over one logging interval."""

    def __init__(self):
        self._sums: dict = {}
        self._steps = 0
        self._clock = time.perf_counter()

    def reset_clock(self) -> None:
        self._clock, self._timed_steps_offset = time.perf_counter(), self._steps

    def add(self, sums: dict) -> None:
        for name, value in sums.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._steps += 1

    def flush(self, step: int, planned: int, batch_size: int, writer) -> dict:
        values = {name: float(value) for name, value in self._sums.items()}
        elapsed = time.perf_counter() - self._clock
        timed_steps = self._steps - getattr(self, "_timed_steps_offset", 0)
        images_per_second = timed_steps * batch_size / elapsed if elapsed > 0 and timed_steps else 0.0
        examples = max(values.get("examples", 0.0), 1.0)
        terms = {"loss": values["loss"] / examples, "cross_entropy": values["cross_entropy"] / max(values["labeled"], 1.0),
                 "kl_divergence": values["kl_divergence"] / examples,
                 "train_top1": values["correct"] / values["labeled"] if values["labeled"] else None}
        logging.info("step %d/%d  loss %.4f  ce %.4f  kl %.4f  %.1f images/s", step, planned, terms["loss"],
                     terms["cross_entropy"], terms["kl_divergence"], images_per_second)
        if writer is not None:
            with writer.as_default(step=step):
                for name, value in terms.items():
                    if value is not None:
                        write_scalar(name, value)
                write_scalar("images_per_second", images_per_second)
            writer.flush()
        self._sums, self._steps, self._timed_steps_offset = {}, 0, 0
        self._clock = time.perf_counter()
        return terms


# TensorBoard's scalar plugin reads summaries tagged with this metadata. tf.summary.scalar needs the
# tensorboard package (not a TF dependency since TF 2.20, and not installed here); tf.summary.write is
# the core op tf.summary.scalar itself calls, so the event files are the same.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalar(name: str, value: float) -> None:
    """One TensorBoard scalar into the default summary writer at its default step."""
    tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


def save_outputs(student: keras.Model, config: TrainConfig, num_classes: int, output_dir: str, summary: dict) -> None:
    """Writes student.keras, saved_model/ and summary.json into `output_dir`.

    The exported model is a fresh float32 student outside any strategy scope with the trained weights,
    so it loads and converts to TFLite without the strategy that trained it.
    """
    exported = students.build_student(config.student, config.width, config.image_size, num_classes)
    exported.set_weights([np.asarray(w) for w in student.get_weights()])
    keras_path = os.path.join(output_dir, "student.keras")
    exported.save(keras_path)
    exported.export(os.path.join(output_dir, "saved_model"), format="tf_saved_model", verbose=False)
    summary["outputs"] = {"keras": os.path.join(config.model_dir, "student.keras"),
                          "saved_model": os.path.join(config.model_dir, "saved_model")}
    with tf.io.gfile.GFile(os.path.join(output_dir, "summary.json"), "w") as file:
        json.dump(summary, file, indent=2, default=_json_default)
    logging.info("wrote %s", output_dir)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")
