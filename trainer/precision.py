"""Mixed precision for the student: Keras' mixed_bfloat16 or mixed_float16 policy while it is built.

Under a mixed policy the layers compute in bfloat16 or float16 and keep float32 variables, so the
optimizer, the checkpoints, the EMA and the exported student (rebuilt in float32, trainer/export.py)
are float32 as before; the loss casts the logits to float32 (trainer/losses.py). float16's narrow range
needs loss scaling: its optimizer is wrapped in keras.optimizers.LossScaleOptimizer (the train step
scales the loss, the wrapper unscales the gradients and skips a step whose gradients are not finite).
bfloat16 has float32's range and needs none. The policy is set only while the student is built, so the
teacher and the exported student stay float32.

    python -c "from trainer import precision; help(precision.policy)"
"""

from __future__ import annotations

import contextlib

import keras

PRECISIONS = ("float32", "bfloat16", "float16")


@contextlib.contextmanager
def policy(mixed_precision: str):
    """Keras' global dtype policy set to mixed_<mixed_precision> inside the block (float32: unchanged)."""
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed precision must be one of {', '.join(PRECISIONS)}, got {mixed_precision!r}")
    if mixed_precision == "float32":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{mixed_precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, mixed_precision: str) -> keras.optimizers.Optimizer:
    """float16: the optimizer inside a LossScaleOptimizer (dynamic loss scaling); otherwise as it is."""
    if mixed_precision == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def loss_scale(optimizer: keras.optimizers.Optimizer) -> float | None:
    """The dynamic loss scale a float16 run has reached (summary.json's `loss_scale`; None without loss
    scaling): it halves on every step whose gradients overflow float16, so a scale far below the initial
    2**15 says the run skipped steps for overflow."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return float(optimizer.dynamic_scale.numpy())
    return None
