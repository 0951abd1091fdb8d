"""The top-1 of a Keras model on labelled records, computed outside the code under test (imported by tests).

Each labelled record's centre crop comes from `distillery.record_pixels.eval_view` (the NumPy path, not
the trainer's tf.data graph) and the model runs through `model.predict`; tests compare the top-1 a job
reports with this one instead of only checking that it lies in [0, 1].
"""

from __future__ import annotations

import keras
import numpy as np

from distillery import record_pixels, records


def independent_top1(model: keras.Model | str, pattern: str) -> tuple[float, int]:
    """(top-1, labelled records) of `model` (or the .keras file at that path) on the records of `pattern`."""
    if isinstance(model, str):
        model = keras.saving.load_model(model)
    labelled = [record for record in records.read_records(pattern) if record.label >= 0]
    height, width, channels = (int(side) for side in model.inputs[0].shape[1:])
    images = np.stack([record_pixels.eval_view(record, (height, width), channels) for record in labelled])
    predicted = np.argmax(model.predict(images, verbose=0), axis=1)
    return float(np.mean(predicted == np.array([record.label for record in labelled]))), len(labelled)
