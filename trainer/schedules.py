"""The learning-rate schedule of a training run: linear warmup to the peak, then cosine decay to 0.

For step s of `steps` with W = `warmup_steps` and peak rate P:

    s <  W:  P * s / W                                     (linear warmup from 0)
    s >= W:  P * (1 + cos(pi * (s - W) / (steps - W))) / 2  (cosine decay over the remaining steps)

Warmup keeps the first steps of a large-batch run from diverging (Goyal et al. 2017, "Accurate, Large
Minibatch SGD"); W = 0 is the plain cosine decay the trainer always had.

    python -c "from trainer import schedules; s = schedules.warmup_cosine(0.4, 100, 10); print([float(s(i)) for i in (0, 5, 55)])"
"""

from __future__ import annotations

import keras


def warmup_cosine(learning_rate: float, steps: int, warmup_steps: int = 0) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule above (Keras' CosineDecay with its linear warmup from 0 to `learning_rate`).

    Raises:
      ValueError: warmup_steps negative or not below steps.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    if warmup_steps >= steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be below the steps ({steps})")
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=steps - warmup_steps, warmup_target=learning_rate,
                                                  warmup_steps=warmup_steps)
