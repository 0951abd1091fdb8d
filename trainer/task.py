"""What a distillation trains (tensorflow/models official/core Task style): student, inputs, train step, evaluation.

`DistillationTask` holds the settings one distillation needs and builds its pieces; trainer/driver.py's
`run_steps` runs the step it builds. The train step is written for one replica: per-example losses from
`trainer.losses.distillation_loss`, summed and divided by the *global* batch size, inside `strategy.run`;
the Keras optimizer all-reduces (sums) the replicas' gradients, so N replicas take the same step as one
replica with the whole batch. Gradients are taken for the model's trainable variables only, so a task
whose model is given with some layers frozen (compress/finetune.py's fine-tuning of a factorized
student) trains that subset with the same step.

Offline mode reads the teacher distribution of the replayed view from the records; online mode
(`teacher` set) runs the teacher inside the step on the same view, cropped at the teacher's input size.

The evaluation (`evaluate`, `Evaluator`, `DistillationTask.evaluate`) runs under the strategy too: each
replica evaluates its share of the eval records and the counts are summed over replicas and workers, so
one device and N give the same counts; evaluation during training (trainer/eval_hook.py) calls it.

    python -c "from trainer import task; t = task.DistillationTask('records-*', 128, 64, alpha=0.5, \
temperature=4.0, student='mobilenet_v1', width=0.25); print(t.build_model().count_params())"
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from distillery import records
from trainer import bad_records, data, losses, precision, schedules, students, weight_decay


def make_optimizer(name: str, learning_rate: float, steps: int, warmup_steps: int = 0,
                   decoupled_weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """`name` (adam, or sgd with Nesterov momentum 0.9) with `warmup_steps` of linear warmup to
    `learning_rate` and a cosine decay over the rest of `steps` (trainer/schedules.py), and decoupled
    weight decay when given (AdamW / SGD's weight_decay; trainer/weight_decay.py says which variables);
    the trainer and the factorize job's fine-tuning share it."""
    schedule = schedules.warmup_cosine(learning_rate, steps, warmup_steps)
    decay = decoupled_weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=schedule, weight_decay=decay)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=decay)


def make_train_step(student: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                    global_batch_size: int, alpha: float, temperature: float, teacher=None, label_smoothing: float = 0.0,
                    jit_compile: bool = False):
    """The per-replica step, run by `strategy.run`; returns the replicas' loss sums reduced (SUM).

    The returned function takes a distributed batch (images, targets) and must be called inside a
    tf.function. Gradients are taken with respect to the student's trainable variables only. With
    `jit_compile` the student's forward and backward pass (the loss and its gradients) are one XLA
    cluster per replica; the optimizer's update, with its all-reduce of the gradients, stays outside it,
    where tf.distribute's cross-replica calls are allowed.
    """

    def forward_backward(images, labels, teacher_probabilities):
        with tf.GradientTape() as tape:
            student_logits = tf.cast(student(images, training=True), tf.float32)  # float32 under mixed precision
            per_example = losses.distillation_loss(labels, student_logits, teacher_probabilities, alpha, temperature,
                                                   label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if student.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(student.losses))
            loss = optimizer.scale_loss(loss)  # float16's LossScaleOptimizer: scaled (unscaled in apply_gradients)
        return tape.gradient(loss, student.trainable_variables), student_logits, per_example

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images, targets):
        labels = targets["labels"]
        if teacher is not None:
            teacher_logits = tf.stop_gradient(teacher(targets["teacher_images"]))
            teacher_probabilities = tf.nn.softmax(teacher_logits / temperature, axis=-1)
        else:
            teacher_probabilities = targets["teacher_probabilities"]
        gradients, student_logits, per_example = forward_backward(images, labels, teacher_probabilities)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        cross_entropy, kl_divergence = losses.distillation_terms(labels, student_logits, teacher_probabilities,
                                                                 temperature)
        labeled = tf.cast(labels >= 0, tf.float32)
        correct = tf.cast(tf.math.in_top_k(tf.maximum(labels, 0), student_logits, 1), tf.float32) * labeled
        return {"loss": tf.reduce_sum(per_example), "cross_entropy": tf.reduce_sum(cross_entropy),
                "kl_divergence": tf.reduce_sum(kl_divergence), "labeled": tf.reduce_sum(labeled),
                "correct": tf.reduce_sum(correct), "examples": tf.cast(tf.shape(labels)[0], tf.float32),
                **bad_records.step_outputs(targets)}  # the skipped bad records the batch carries

    def step(images, targets):
        per_replica = strategy.run(replica_step, args=(images, targets))
        return bad_records.reduce_step_outputs(strategy, per_replica)  # summed (SUM), but the bad file's index

    return step


def evaluate(student: keras.Model, pattern: str, image_size: int, batch_size: int = 100,
             strategy: tf.distribute.Strategy | None = None) -> dict:
    """Top-1/top-5 of `student` on the labeled records of `pattern` (centre crop), under `strategy`.

    Every replica of the strategy (None: the default one-device strategy) evaluates its share of the
    records (`distribute_datasets_from_function`: by file, or by record when there are fewer files than
    input pipelines) at ceil(batch_size / replicas) per replica, and the counts are summed over replicas
    and workers; every worker of a multi-worker strategy must call it. Build once, call often: see
    `Evaluator`.

    Returns:
      {'top1', 'top5', 'images'} over the records whose label is not -1.
    """
    return Evaluator(student, pattern, image_size, batch_size, strategy)()


class Evaluator:
    """The distributed evaluation of one model on one eval set, traced once and run as often as asked."""

    def __init__(self, student: keras.Model, pattern: str, image_size: int, batch_size: int = 100,
                 strategy: tf.distribute.Strategy | None = None):
        strategy = strategy or tf.distribute.get_strategy()
        per_replica = max(1, -(-batch_size // strategy.num_replicas_in_sync))
        self.dataset = strategy.distribute_datasets_from_function(
            lambda context: data.make_dataset(pattern, image_size, per_replica, training=False, input_context=context))
        num_classes = int(student.outputs[0].shape[-1])

        def counts(images, labels):
            logits = tf.cast(student(images, training=False), tf.float32)
            labeled = labels >= 0
            safe = tf.where(labeled, labels, 0)
            top1 = tf.math.in_top_k(safe, logits, 1) & labeled
            top5 = tf.math.in_top_k(safe, logits, min(5, num_classes)) & labeled
            return [tf.reduce_sum(tf.cast(x, tf.int64)) for x in (top1, top5, labeled)]

        def replica_counts(images, labels):
            # A replica left without records at the end gets an empty batch; the model is not run on it
            # (oneDNN's CPU convolution returns its input unchanged for a batch of 0).
            return tf.cond(tf.shape(images)[0] > 0, lambda: counts(images, labels),
                           lambda: [tf.constant(0, tf.int64)] * 3)

        def batch_counts(images, targets):
            per_replica_counts = strategy.run(replica_counts, args=(images, targets["labels"]))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None) for count in per_replica_counts]

        # Traced once for the dataset's batch shape [None, ...]: the smaller last batch needs no second trace.
        self.batch_counts = tf.function(batch_counts, input_signature=self.dataset.element_spec)

    def __call__(self) -> dict:
        totals = np.zeros(3, np.int64)
        for images, targets in self.dataset:
            totals += np.array([count.numpy() for count in self.batch_counts(images, targets)])
        count = int(totals[2])
        return {"top1": totals[0] / count if count else None, "top5": totals[1] / count if count else None,
                "images": count}


@dataclasses.dataclass
class DistillationTask:
    """One distillation: which student, on which records, with which loss, optimizer and evaluation.

    Attributes:
      train_pattern: glob(s) of soft-label records.
      image_size: the student's input side S.
      global_batch_size: examples per step over all replicas.
      alpha, temperature: the distillation loss (hard-label weight, T).
      student, width, num_classes: what build_model builds (num_classes None: the records').
      optimizer, learning_rate, warmup_steps, weight_decay: what create_optimizer makes (linear warmup,
        cosine decay to 0, decoupled weight decay of the kernels).
      label_smoothing: on the hard-label term of the loss.
      mixed_precision: float32, or bfloat16 / float16: the student's layers compute in it (trainer/precision.py).
      jit_compile: the forward and backward pass of the train step XLA-compiled (see make_train_step).
      sync_batch_norm: batch-norm statistics over the global batch, all-reduced over the replicas
        (students.with_synchronized_batch_norm).
      teacher: online mode: a teacher run inside the step (None: offline, from the records).
      spec: the records' RecordSpec (read from the files when None).
      images_stored: whether the records store their images (`records.survey`; surveyed when None).
      seed: the data order and the view choices.
      shuffle_buffer: records in the input pipeline's shuffle buffer.
      eval_pattern, eval_batch_size: labelled records for `evaluate` (centre crop).
    """

    train_pattern: str
    image_size: int
    global_batch_size: int
    alpha: float
    temperature: float
    student: str = "mobilenet_v1"
    width: float = 1.0
    num_classes: int | None = None
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    warmup_steps: int = 0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    mixed_precision: str = "float32"
    jit_compile: bool = False
    sync_batch_norm: bool = False
    teacher: object = None
    spec: records.RecordSpec | None = None
    images_stored: bool | None = None
    seed: int = 0
    shuffle_buffer: int = data.DEFAULT_SHUFFLE_BUFFER
    eval_pattern: str | None = None
    eval_batch_size: int = 100
    _evaluators: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def online(self) -> bool:
        return self.teacher is not None

    def record_spec(self) -> records.RecordSpec:
        """The training records' spec (read from the files when the task was not given one)."""
        return self.spec or records.read_spec(records.expand_paths(self.train_pattern))

    def build_model(self) -> keras.Model:
        """A freshly initialized student (call inside the strategy's scope)."""
        num_classes = self.num_classes or self.record_spec().num_classes
        with precision.policy(self.mixed_precision):
            model = students.build_student(self.student, self.width, self.image_size, num_classes)
            return students.with_synchronized_batch_norm(model) if self.sync_batch_norm else model

    def create_optimizer(self, decay_steps: int, variables=()) -> keras.optimizers.Optimizer:
        """The optimizer (not built); weight decay leaves the rank-0/1 `variables` (biases, batch norm) alone."""
        optimizer = make_optimizer(self.optimizer, self.learning_rate, decay_steps, self.warmup_steps, self.weight_decay)
        weight_decay.exclude_norms_and_biases(optimizer, list(variables))
        return precision.wrap_optimizer(optimizer, self.mixed_precision)

    def build_inputs(self, strategy: tf.distribute.Strategy | None = None, seed_offset: int = 0):
        """An endless iterator of training batches: per replica under `strategy`, plain batches without one.

        `seed_offset` reseeds the stream (a resumed run passes its restored step, so it does not replay
        the examples of the first steps).
        """
        def dataset(batch_size: int, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
            return data.make_dataset(
                self.train_pattern, self.image_size, batch_size, training=True, seed=self.seed + seed_offset,
                spec=self.spec, images_stored=self.images_stored,
                temperature=None if self.online else self.temperature,
                teacher_image_size=tuple(self.teacher.input_size) if self.online else None,
                shuffle_buffer=self.shuffle_buffer, input_context=input_context)

        if strategy is None:
            return iter(dataset(self.global_batch_size))
        return iter(strategy.distribute_datasets_from_function(
            lambda context: dataset(context.get_per_replica_batch_size(self.global_batch_size), context)))

    def build_train_step(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                         strategy: tf.distribute.Strategy | None = None, step_counter: tf.Variable | None = None,
                         weight_average=None):
        """A tf.function of an iterator: draws one batch, takes one step, returns the summed outputs.

        `step_counter` (the checkpointed step variable) is incremented in the same graph, and
        `weight_average` (trainer/ema.py), when given, is updated after the optimizer's step.
        """
        replica_step = make_train_step(model, optimizer, strategy or tf.distribute.get_strategy(),
                                       self.global_batch_size, self.alpha, self.temperature, self.teacher,
                                       self.label_smoothing, self.jit_compile)

        @tf.function
        def train_step(iterator):
            images, targets = next(iterator)
            sums = replica_step(images, targets)
            if weight_average is not None:
                weight_average.update()
            if step_counter is not None:
                step_counter.assign_add(1)
            return sums

        return train_step

    def interval_terms(self, sums: dict, steps: int | None = None) -> dict:
        """The driver's `summarize`: loss and KL per example, cross-entropy and train top-1 per labelled example."""
        del steps  # the sums carry their own example counts
        examples = max(sums.get("examples", 0.0), 1.0)
        return {"loss": sums["loss"] / examples, "cross_entropy": sums["cross_entropy"] / max(sums["labeled"], 1.0),
                "kl_divergence": sums["kl_divergence"] / examples,
                "train_top1": sums["correct"] / sums["labeled"] if sums["labeled"] else None}

    def evaluate(self, model: keras.Model, strategy: tf.distribute.Strategy | None = None) -> dict:
        """{'top1', 'top5', 'images'} of `model` on `eval_pattern`, on every replica of `strategy` (counts
        summed over replicas and workers); the evaluation is traced on the first call for this model and
        strategy (evaluation during training calls it every N steps)."""
        if not self.eval_pattern:
            raise ValueError("this task has no eval_pattern to evaluate on")
        key = (id(model), id(strategy))
        if key not in self._evaluators:
            self._evaluators[key] = Evaluator(model, self.eval_pattern, self.image_size, self.eval_batch_size, strategy)
        return self._evaluators[key]()
