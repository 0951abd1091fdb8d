"""Distillation fine-tuning of a factorized student: layerwise (the LPIRC 2018 seed procedure) or oneshot.

- layerwise: factorize one layer, freeze every other weight (only the two new factor kernels and the
  moved bias train; frozen batch-norm layers run on their moving statistics and keep them), fine-tune
  with the distillation loss on the soft-label records, then move on to the next layer, in graph order.
  `--final_steps` adds one last phase in which every weight trains jointly (the per-layer phases fit each
  factor pair to a network frozen around it; the last phase lets the layers adjust to each other).
- oneshot: factorize every selected layer at once, then fine-tune all the weights jointly.

Both spend `steps` optimizer steps (layerwise splits them evenly over the layers), so the comparison is
at equal fine-tuning compute; layerwise with `final_steps` spends steps + final_steps. The loss, the
record pipeline and the train step are the trainer's: each phase is a `FinetuneTask` (a
`trainer.task.DistillationTask` whose model is given and whose trainable layers are a subset) stepped by
the trainer's one loop, `trainer.driver.run_steps`, on one device; gradients are taken only for the
model's trainable variables, which is what freezing relies on. Each phase gets a fresh Adam (or SGD) with
cosine decay to 0.

    python -c "from compress import finetune; help(finetune.factorize_and_finetune)"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import keras

from compress import factorize
from distillery.cli import option
from trainer import driver, task, train_config

MODES = ("layerwise", "oneshot")
OPTIMIZERS = train_config.OPTIMIZERS


@dataclasses.dataclass
class FinetuneConfig:
    """How to fine-tune; each field but train_pattern is a `distillery-factorize` flag."""

    train_pattern: str  # set from the job's --train
    mode: str = option("layerwise", choices=MODES, help="layerwise: one layer at a time, others frozen (the seed "
                                                       "procedure); oneshot: all, joint.")
    steps: int = option(600, help="Total fine-tuning steps (layerwise: split over the layers; 0 = none).")
    final_steps: int = option(0, help="Layerwise: steps of a last phase in which every weight trains jointly "
                                      "(after the per-layer phases).")
    batch_size: int = option(64, help="Fine-tuning batch size.")
    learning_rate: float = option(1e-3, help="Peak learning rate of each phase (cosine decay to 0).")
    optimizer: str = option("adam", choices=OPTIMIZERS, help="adam or sgd (Nesterov momentum 0.9).")
    alpha: float = option(0.5, help="Weight of the hard-label cross-entropy term.")
    temperature: float = option(4.0, help="Distillation temperature T.")
    seed: int = option(0, help="Seed of the data order and view choices.")
    log_every: int = option(100, help="Steps between progress lines.")

    def check(self) -> None:
        """Raises ValueError naming the flag of a bad value."""
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.final_steps < 0:
            raise ValueError(f"--final_steps must be >= 0, got {self.final_steps}")
        if self.final_steps and self.mode != "layerwise":
            raise ValueError("--final_steps is the last phase of --mode=layerwise; oneshot trains jointly for --steps")
        if self.steps < 0 or self.batch_size < 1 or self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("--steps must be >= 0 and --batch_size, --learning_rate, --temperature positive")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {self.alpha}")


def image_size_of(model: keras.Model) -> int:
    """The square input side S of a student; raises ValueError for other inputs."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"fine-tuning needs a square RGB student input [N, S, S, 3], got {shape}")
    return int(shape[1])


def set_trainable(model: keras.Model, trainable_names: set[str] | None) -> None:
    """Makes only the layers named in `trainable_names` trainable (None: every layer)."""
    model.trainable = True
    for layer in model.layers:
        layer.trainable = trainable_names is None or layer.name in trainable_names


def _task_settings(config: FinetuneConfig, image_size: int) -> dict:
    return dict(train_pattern=config.train_pattern, image_size=image_size, global_batch_size=config.batch_size,
                alpha=config.alpha, temperature=config.temperature, optimizer=config.optimizer,
                learning_rate=config.learning_rate, seed=config.seed)


class FinetuneTask(task.DistillationTask):
    """One fine-tuning phase as a distillation task: the model is given, and only `trainable_names` train."""

    def __init__(self, model: keras.Model, config: FinetuneConfig, trainable_names: set[str] | None = None):
        super().__init__(**_task_settings(config, image_size_of(model)))
        self.model = model
        self.trainable_names = trainable_names

    def build_model(self) -> keras.Model:
        """The given model, every layer but `trainable_names` frozen (None: all train)."""
        set_trainable(self.model, self.trainable_names)
        return self.model


def finetune(model: keras.Model, config: FinetuneConfig, steps: int, dataset_iterator,
             trainable_names: set[str] | None = None, label: str = "fine-tune",
             log: Callable[[str], None] = print) -> dict:
    """Runs `steps` distillation steps on `model` in place (one `trainer.driver.run_steps` call).

    Args:
      model: the (factorized) student.
      config: loss and optimizer settings.
      steps: optimizer steps.
      dataset_iterator: an iterator over `trainer.data.make_dataset(..., training=True, temperature=T)`.
      trainable_names: layers that train (None: all); every other layer is frozen.
      label: prefix of the progress lines.
      log: where progress lines go.

    Returns:
      {"steps", "loss" (mean over the last logging interval), "train_top1" (same), "images_per_second"
      (the phase's steps after the first, tracing one; None for a one-step phase)}.
    """
    phase = FinetuneTask(model, config, trainable_names)
    model = phase.build_model()
    if steps <= 0:
        return {"steps": 0, "loss": None, "train_top1": None, "images_per_second": None}
    optimizer = phase.create_optimizer(steps)
    totals = driver.run_steps(phase.build_train_step(model, optimizer), dataset_iterator, 0, steps,
                              batch_size=config.batch_size, log_every=config.log_every,
                              summarize=phase.interval_terms, label=label, log=log)
    return {"steps": totals.steps, "loss": totals.terms["loss"], "train_top1": totals.terms["train_top1"],
            "images_per_second": totals.images_per_second}


def make_iterator(config: FinetuneConfig, image_size: int):
    """An endless iterator of (images, targets) batches with teacher probabilities at T (the task's inputs)."""
    return task.DistillationTask(**_task_settings(config, image_size)).build_inputs()


def factorize_and_finetune(model: keras.Model, ranks: Mapping[str, int], config: FinetuneConfig,
                           log: Callable[[str], None] = print, dataset_iterator=None) -> tuple[keras.Model, list[dict]]:
    """Factorizes `model` at `ranks` and fine-tunes it, layerwise or oneshot.

    Args:
      model: the unfactorized student (not modified).
      ranks: {layer name: rank}, e.g. from `compress.rank_selection`.
      config: see FinetuneConfig.
      log: where progress lines go.
      dataset_iterator: batches to train on (default: `make_iterator(config, S)`).

    Returns:
      (the factorized, fine-tuned model with every layer trainable again, one dict per phase:
      {"layers", "steps", "loss", "train_top1", "images_per_second"}).
    """
    config.check()
    factorize.check_ranks(model, ranks)
    if dataset_iterator is None and config.steps + config.final_steps > 0:
        dataset_iterator = make_iterator(config, image_size_of(model))
    order = [layer.name for layer in factorize.find_factorizable_layers(model) if layer.name in ranks]
    phases = []
    if config.mode == "oneshot":
        current = factorize.factorize_model(model, ranks)
        log(f"oneshot: factorized {len(order)} layers; fine-tuning all weights for {config.steps} steps")
        phases.append({"layers": order, **finetune(current, config, config.steps, dataset_iterator, None,
                                                    "oneshot", log)})
    else:
        current = model
        # The same total number of steps as oneshot, spread over the layers (the first layers take the
        # remainder), so the two modes are compared at equal cost.
        per_layer = [config.steps // max(len(order), 1) + (index < config.steps % max(len(order), 1))
                     for index in range(len(order))]
        if order and config.steps and min(per_layer) == 0:
            log(f"layerwise: {config.steps} steps for {len(order)} layers: some layers get no fine-tuning")
        for index, name in enumerate(order):
            current = factorize.factorize_model(current, {name: ranks[name]})
            trainable = {name + factorize.FIRST_SUFFIX, name + factorize.SECOND_SUFFIX}
            label = f"layerwise {index + 1}/{len(order)} {name} (rank {ranks[name]})"
            phases.append({"layers": [name], **finetune(current, config, per_layer[index], dataset_iterator,
                                                         trainable, label, log)})
        if config.final_steps:
            log(f"layerwise: last phase, every weight trains for {config.final_steps} steps")
            phases.append({"layers": order, **finetune(current, config, config.final_steps, dataset_iterator, None,
                                                        "layerwise final (all weights)", log)})
    set_trainable(current, None)
    return current, phases


def evaluate_top1(model: keras.Model, pattern: str, batch_size: int = 100) -> float:
    """Top-1 of the Keras model on the labelled records of `pattern` (centre crop; `trainer.task.evaluate`)."""
    top1 = task.evaluate(model, pattern, image_size_of(model), batch_size)["top1"]
    if top1 is None:
        raise ValueError(f"--eval={pattern}: no record has a label (-1 everywhere), so there is no top-1")
    return float(top1)
