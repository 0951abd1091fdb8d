"""Decoupled weight decay (Loshchilov and Hutter 2019, "Decoupled Weight Decay Regularization") on kernels only.

The Keras 3 optimizers take `weight_decay` and apply it apart from the gradient: before each update every
decayed variable w becomes w - learning_rate * weight_decay * w (AdamW with adam, SGD with decoupled decay
with sgd). Batch-norm scales and offsets and biases (the variables of rank 0 or 1) are not decayed: shrinking
them regularizes nothing and hurts accuracy (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 5.1).

    python -c "from trainer import weight_decay; help(weight_decay.exclude_norms_and_biases)"
"""

from __future__ import annotations

import keras


def decayed(variables) -> list:
    """The variables weight decay applies to: kernels (rank 2 and up), not biases or batch-norm gammas/betas."""
    return [variable for variable in variables if len(variable.shape) > 1]


def exclude_norms_and_biases(optimizer: keras.optimizers.Optimizer, variables) -> None:
    """Tells `optimizer` (not yet built; a LossScaleOptimizer's inner one) not to decay the rank-0/1 `variables`."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if inner.weight_decay is None:
        return
    kept = {id(variable) for variable in decayed(variables)}
    inner.exclude_from_weight_decay(var_list=[variable for variable in variables if id(variable) not in kept])
