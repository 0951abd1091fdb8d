"""A non-finite loss stops the run before anything is saved, naming the first step whose loss was not finite.

A diverged run (NaN or infinite loss: a learning rate too high, a bad batch) has NaN weights from then on;
saving them would overwrite the good checkpoints a rerun resumes from. `FiniteLoss` is a hook of
trainer/driver.py placed before the checkpointing hook: it keeps each step's loss (a tensor, not waited
for) and checks them on the steps where the loop waits for the device anyway, at each log line and on
every checkpoint step, and once at the end, before the checkpointing hook's own final save. The first
non-finite one raises `NonFiniteLossError` naming its step; the run writes no checkpoint, summary.json or
student after it, and the checkpoints of earlier saves stay.

    python -c "from trainer import loss_guard; help(loss_guard.FiniteLoss)"
"""

from __future__ import annotations

import math

from trainer import driver


class NonFiniteLossError(RuntimeError):
    """The loss of a step was NaN or infinite; the message names the step."""


class FiniteLoss(driver.Hook):
    """Checks the step outputs' `name` for finiteness at log and checkpoint steps (see the module docstring).

    Args:
      checkpoint_every: the checkpoint interval (0: only at the end), so that no checkpoint step goes unchecked.
      name: the output to check (the summed loss of the step).
    """

    def __init__(self, checkpoint_every: int = 0, name: str = "loss"):
        self.checkpoint_every = checkpoint_every
        self.name = name
        self._pending: list[tuple[int, object]] = []

    def after_step(self, state: driver.LoopState) -> None:
        if self.name in state.outputs:
            self._pending.append((state.step, state.outputs[self.name]))
        if state.logged or (self.checkpoint_every and state.step % self.checkpoint_every == 0):
            self.check()

    def end(self, state: driver.LoopState) -> None:
        self.check()

    def check(self) -> None:
        """Raises NonFiniteLossError for the first non-finite value since the last check."""
        pending, self._pending = self._pending, []
        for step, value in pending:
            value = float(value)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"step {step}: the loss is {value}: training diverged; stopped before saving anything of this "
                    f"step (the checkpoints saved before it are kept; a lower --learning_rate may help)")
