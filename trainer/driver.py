"""The one training loop: steps a step function and does the bookkeeping every trainer in Distillery needs.

`run_steps(step_fn, iterator, start_step, end_step, ...)` calls `step_fn(iterator)` once per step (one
optimizer step that returns a dict of values summed over the batch), adds the sums up over each logging
interval, and every `log_every` steps (and at the last step) turns them into terms with `summarize` (the
task's: means per example, top-1, ...), logs one line with the terms and images/s and, given a writer,
writes them as TensorBoard scalars. Hooks run after every step: checkpointing is one
(trainer.checkpointing.CheckpointKeeper), a callback that paces or kills a test run is another
(`StepCallback`), and any hook may ask the loop to stop (`LoopState.request_stop`). The first step of a
call traces the tf.function, so throughput is timed from its end.

Users: `distillery-train` (trainer/loop.py), each fine-tuning phase of the factorize job
(compress/finetune.py) and the step-alone and input-alone timings of benchmarks/training.py. What to
train comes from a task (trainer/task.py), so later additions fit without another loop: evaluation during
training is a Hook that runs the task's evaluation every N steps and keeps the best checkpoint (and may
request a stop), quantization-aware training is a task whose model carries fake-quant layers.

    python -c "from trainer import driver; print(driver.run_steps(lambda it: {'loss': next(it)}, \
iter([3.0, 2.0, 1.0]), 0, 3, batch_size=1, log_every=2, log=print))"
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

StepFunction = Callable[[Iterator], Mapping]


@dataclasses.dataclass
class LoopState:
    """What hooks see after each step, and how one of them stops the loop.

    Attributes:
      step: the step just taken (steps are numbered from 1; start_step + 1 is the first of this call).
      start_step: the step the call started after (a resumed run's restored step).
      end_step: the step the call stops at unless a hook stops it first.
      logged: whether this step ended a logging interval.
      terms: the terms of the last logged interval ({} before the first line).
      stop_reason: None while running; the reason once a hook asked to stop (or "end_step").
      outputs: what step_fn returned for this step (tensors: reading one waits for the device; the
        non-finite loss check and the bad-record counts read them at log steps).
    """

    step: int
    start_step: int
    end_step: int
    logged: bool = False
    terms: dict = dataclasses.field(default_factory=dict)
    stop_reason: str | None = None
    outputs: Mapping = dataclasses.field(default_factory=dict)

    def request_stop(self, reason: str) -> None:
        """Stops the loop after this step's hooks (the first reason given is kept)."""
        if self.stop_reason is None:
            self.stop_reason = reason


class Hook:
    """Something run_steps calls after every step and once at the end; override what you need."""

    def after_step(self, state: LoopState) -> None:
        """After step `state.step` (and its log line, when it ended an interval)."""

    def end(self, state: LoopState) -> None:
        """Once, after the last step (the step limit or a stop request), not after an exception."""


class StepCallback(Hook):
    """A hook from a function of the step number (tests use one to pace or kill a run)."""

    def __init__(self, function: Callable[[int], None]):
        self.function = function

    def after_step(self, state: LoopState) -> None:
        self.function(state.step)


@dataclasses.dataclass(frozen=True)
class RunTotals:
    """What one run_steps call did.

    Attributes:
      steps: steps taken by this call.
      last_step: the step number reached.
      terms: the last logging interval's terms.
      steps_per_second, images_per_second: over the steps after the first (None with fewer than two steps).
      stop_reason: "end_step", or the reason a hook gave.
    """

    steps: int
    last_step: int
    terms: dict
    steps_per_second: float | None
    images_per_second: float | None
    stop_reason: str


def mean_per_step(sums: Mapping[str, float], steps: int) -> dict:
    """The default `summarize`: each summed value divided by the interval's steps."""
    return {name: value / steps for name, value in sums.items()}


def run_steps(step_fn: StepFunction, iterator: Iterator, start_step: int, end_step: int, *, batch_size: int,
              log_every: int, summarize: Callable[[Mapping[str, float], int], dict] = mean_per_step,
              writer: tf.summary.SummaryWriter | None = None, hooks: Sequence[Hook] = (), label: str = "",
              log: Callable[[str], None] = logging.info, clock: Callable[[], float] = time.perf_counter) -> RunTotals:
    """Takes steps start_step + 1 .. end_step of `step_fn(iterator)`, logging, timing and calling hooks.

    Args:
      step_fn: one step; returns {name: value summed over the step's examples} (tensors or floats).
      iterator: what step_fn draws its batch from (a tf.data or distributed iterator, or any iterator).
      start_step: steps already taken (0, or the step a resumed run restored).
      end_step: the step to stop at.
      batch_size: images per step (the global batch), for images/s.
      log_every: steps per logging interval (the last step always closes one).
      summarize: (interval sums as floats, the interval's steps) -> the terms logged and returned.
      writer: when given, each interval's terms and images_per_second go to TensorBoard at its last step.
      hooks: called in order after every step, then once at the end.
      label: prefix of the log lines ("label: step 10/100 ...").
      log: where the lines go.
      clock: seconds, for the throughput (tests pass a fake one).

    Returns:
      RunTotals of this call.
    """
    if log_every < 1:
        raise ValueError(f"log_every must be positive, got {log_every}")
    state = LoopState(step=start_step, start_step=start_step, end_step=end_step)
    interval = _LoggingInterval(clock)
    timing_start = None
    while state.step < end_step and state.stop_reason is None:
        outputs = step_fn(iterator)
        state.step += 1
        state.outputs = outputs
        interval.add(outputs, timed=timing_start is not None)
        if timing_start is None:  # the first step traced the step function: time from its end
            timing_start = interval.restart_clock()
        state.logged = state.step % log_every == 0 or state.step == end_step
        if state.logged:
            state.terms = _close_interval(interval, state, batch_size, summarize, writer, label, log)
        for hook in hooks:
            hook.after_step(state)
        if state.stop_reason is not None and interval.steps:  # a stop between lines still logs its interval
            state.terms = _close_interval(interval, state, batch_size, summarize, writer, label, log)
    timing_end = clock()
    if state.stop_reason is None:
        state.stop_reason = "end_step"
    for hook in hooks:
        hook.end(state)
    steps = state.step - start_step
    elapsed = timing_end - timing_start if timing_start is not None else 0.0
    rate = (steps - 1) / elapsed if steps > 1 and elapsed > 0 else None
    return RunTotals(steps=steps, last_step=state.step, terms=state.terms, steps_per_second=rate,
                     images_per_second=rate * batch_size if rate is not None else None,
                     stop_reason=state.stop_reason)


class _LoggingInterval:
    """The sums and the timed steps of one logging interval."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.sums: dict = {}
        self.steps = 0
        self.timed_steps = 0
        self.started = clock()

    def add(self, outputs: Mapping, timed: bool) -> None:
        for name, value in outputs.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.timed_steps += int(timed)

    def restart_clock(self) -> float:
        self.started = self.clock()
        return self.started

    def close(self, batch_size: int) -> tuple[dict, int, float | None]:
        """(the sums as floats, the steps, images/s of the timed steps) and a fresh interval."""
        sums = {name: float(value) for name, value in self.sums.items()}  # waits for the device
        elapsed = self.clock() - self.started
        images_per_second = self.timed_steps * batch_size / elapsed if self.timed_steps and elapsed > 0 else None
        steps = self.steps
        self.sums, self.steps, self.timed_steps = {}, 0, 0
        self.restart_clock()
        return sums, steps, images_per_second


def _close_interval(interval: _LoggingInterval, state: LoopState, batch_size: int, summarize, writer, label: str,
                    log: Callable[[str], None]) -> dict:
    sums, steps, images_per_second = interval.close(batch_size)
    terms = summarize(sums, steps)
    log(format_line(label, state.step, state.end_step, terms, images_per_second))
    if writer is not None:
        with writer.as_default(step=state.step):
            for name, value in terms.items():
                if value is not None:
                    write_scalar(name, value)
            if images_per_second is not None:
                write_scalar("images_per_second", images_per_second)
        writer.flush()
    return terms


def format_line(label: str, step: int, end_step: int, terms: Mapping, images_per_second: float | None) -> str:
    """`label: step 10/100  loss 0.1234  train_top1 0.5000  812.3 images/s` (n/a for a missing value)."""
    prefix = f"{label}: " if label else ""
    values = "".join(f"  {name} {'n/a' if value is None else f'{value:.4f}'}" for name, value in terms.items())
    rate = "n/a" if images_per_second is None else f"{images_per_second:.1f}"
    return f"{prefix}step {step}/{end_step}{values}  {rate} images/s"


# TensorBoard's scalar plugin reads summaries tagged with this metadata. tf.summary.scalar needs the
# tensorboard package (not a TF dependency since TF 2.20, and not installed here); tf.summary.write is
# the core op tf.summary.scalar itself calls, so the event files are the same.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalar(name: str, value: float) -> None:
    """One TensorBoard scalar into the default summary writer at its default step."""
    tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
