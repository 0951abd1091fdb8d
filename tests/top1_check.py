"""The top-1 of a Keras or .tflite model on labelled records, computed outside the code under test.

Each labelled record's centre crop comes from `distillery.record_pixels.eval_view` (the NumPy path, not
the trainer's tf.data graph, one image at a time) and the model runs through `model.predict`, or LiteRT's
own Interpreter with the input quantized by hand from its scale and zero point (not the project's
Classifier); tests compare the top-1 a job reports with this one instead of only checking that it lies
in [0, 1].
"""

from __future__ import annotations

import keras
import numpy as np
from ai_edge_litert.interpreter import Interpreter

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


def independent_tflite_top1(path: str, pattern: str) -> tuple[float, int]:
    """(top-1, labelled records) of the .tflite model at `path` on the records of `pattern`."""
    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    detail, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    _, height, width, channels = (int(side) for side in detail["shape"])
    labelled = [record for record in records.read_records(pattern) if record.label >= 0]
    correct = 0
    for record in labelled:
        pixels = record_pixels.eval_view(record, (height, width), channels)[None]
        if detail["dtype"] != np.float32:
            scale, zero_point = detail["quantization"]
            limits = np.iinfo(detail["dtype"])
            pixels = np.clip(np.round(pixels / scale + zero_point), limits.min, limits.max)
        interpreter.set_tensor(detail["index"], pixels.astype(detail["dtype"]))
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(output["index"])[0]) == record.label)
    return correct / len(labelled), len(labelled)
