"""An exponential moving average (EMA) of the student's trainable weights, updated after every step.

With decay d, after step t the average is a_t = d * a_{t-1} + (1 - d) * w_t, starting from the
student's initial weights (a_0 = w_0). The averaged weights usually evaluate better than the last ones
(Polyak and Juditsky 1992; the MobileNet and EfficientNet ImageNet recipes use d = 0.9999). The averages
are variables of the strategy (one copy per replica, updated in the cross-replica context of the train
step with the same value everywhere) and go into the checkpoint with the rest, so a resumed run
continues the average instead of restarting it. At the end of training `copy_to_model` puts them into
the student, so the final evaluation and the exported student are the averaged weights; the batch-norm
moving statistics are left as trained (they are averages already).

    python -c "from trainer import ema; help(ema.WeightAverage)"
"""

from __future__ import annotations

import tensorflow as tf


class WeightAverage(tf.Module):
    """The moving averages of `variables` (create inside the strategy's scope; a tf.train.Checkpoint dependency)."""

    def __init__(self, variables, decay: float):
        super().__init__(name="weight_average")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._model_variables = list(variables)
        self.averages = [tf.Variable(tf.convert_to_tensor(variable), trainable=False, name="average")
                         for variable in self._model_variables]

    def update(self) -> None:
        """a = d * a + (1 - d) * w for every weight (call after the optimizer's step, in the cross-replica context)."""
        for average, variable in zip(self.averages, self._model_variables):
            average.assign(self.decay * average + (1.0 - self.decay) * tf.convert_to_tensor(variable))

    def copy_to_model(self) -> None:
        """Puts the averages into the model's variables (at the end of training)."""
        for average, variable in zip(self.averages, self._model_variables):
            variable.assign(tf.convert_to_tensor(average))
