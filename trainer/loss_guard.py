"""A diverged run stops before anything is saved, naming the first step whose loss or weights were not finite.

A diverged run (NaN or infinite loss: a learning rate too high, a bad batch) has NaN weights from then on;
saving them would overwrite the good checkpoints a rerun resumes from. `FiniteLoss` is a hook of
trainer/driver.py placed before the checkpointing hook: it keeps each step's loss (a tensor, not waited
for) and checks them on the steps where the loop waits for the device anyway, at each log line and on
every checkpoint step, and once at the end, before the checkpointing hook's own final save. A step's loss
is computed from the weights before its update, so on the checkpoint steps and at the end it also checks
the weights themselves: the update of the last step checked can be the one that diverged (a finite loss,
an infinite gradient step). The first failure raises `NonFiniteLossError` naming its step; the run writes
no checkpoint, summary.json or student after it, and the checkpoints of earlier saves stay.

    python -c "from trainer import loss_guard; help(loss_guard.FiniteLoss)"
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from trainer import driver


class NonFiniteLossError(RuntimeError):
    """The loss of a step was NaN or infinite; the message names the step."""


class FiniteLoss(driver.Hook):
    """Checks the step outputs' `name` for finiteness at log and checkpoint steps (see the module docstring).

    Args:
      checkpoint_every: the checkpoint interval (0: only at the end), so that no checkpoint step goes unchecked.
      name: the output to check (the summed loss of the step).
      variables: the weights a checkpoint saves (the student's), checked on checkpoint steps and at the end.
    """

    def __init__(self, checkpoint_every: int = 0, name: str = "loss", variables: Sequence[tf.Variable] = ()):
        self.checkpoint_every = checkpoint_every
        self.name = name
        self.variables = list(variables)
        self._pending: list[tuple[int, object]] = []

    def after_step(self, state: driver.LoopState) -> None:
        if self.name in state.outputs:
            self._pending.append((state.step, state.outputs[self.name]))
        saves = bool(self.checkpoint_every) and state.step % self.checkpoint_every == 0
        if state.logged or saves:
            self.check()
        if saves:
            self.check_weights(state.step)

    def end(self, state: driver.LoopState) -> None:
        self.check()
        if state.step > state.start_step:
            self.check_weights(state.step)

    def check_weights(self, step: int) -> None:
        """Raises NonFiniteLossError if a weight is NaN or infinite after `step`, naming the first such variable."""
        for variable in self.variables:
            if not bool(tf.reduce_all(tf.math.is_finite(variable))):
                raise NonFiniteLossError(
                    f"step {step}: the weights are not finite after it ({variable.name}): training diverged; "
                    f"stopped before saving anything of this step (the checkpoints saved before it are kept; a "
                    f"lower --learning_rate may help)")

    def check(self) -> None:
        """Raises NonFiniteLossError for the first non-finite value since the last check."""
        pending, self._pending = self._pending, []
        for step, value in pending:
            value = float(value)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"step {step}: the loss is {value}: training diverged; stopped before saving anything of this "
                    f"step (the checkpoints saved before it are kept; a lower --learning_rate may help)")
