"""The trained student's files: student.keras and saved_model/, rebuilt outside the training strategy.

`exportable_student` makes a fresh float32 student with the trained weights, outside any strategy scope,
so that it loads and converts to TFLite without the strategy that trained it. `write_student_files`
writes student.keras, saved_model/ and one JSON file (summary.json, or best.json of best/) into a folder,
each under a temporary name, renamed into place together once all are written, the JSON last
(distillery/atomic_files.py): a failure half-way leaves the previous files as they were.

    python -c "from trainer import export; help(export.write_student_files)"
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from distillery import atomic_files
from trainer import students


def exportable_student(trained: keras.Model, student: str, width: float, image_size: int,
                       num_classes: int) -> keras.Model:
    """A fresh float32 `student` (outside any strategy scope) holding the weights of `trained`."""
    exported = students.build_student(student, width, image_size, num_classes)
    exported.set_weights([np.asarray(weight) for weight in trained.get_weights()])
    return exported


def write_student_files(model: keras.Model, folder: str, json_name: str, content: dict) -> dict[str, str]:
    """Writes FOLDER/student.keras, FOLDER/saved_model/ and FOLDER/JSON_NAME; returns their paths."""
    paths = {"keras": os.path.join(folder, "student.keras"), "saved_model": os.path.join(folder, "saved_model"),
             "json": os.path.join(folder, json_name)}
    with atomic_files.staged_file(paths["json"]) as json_file, atomic_files.staged(paths["saved_model"]) as saved_model, \
            atomic_files.staged(paths["keras"]) as keras_path:
        model.save(keras_path)
        model.export(saved_model, format="tf_saved_model", verbose=False)
        json.dump(content, json_file, indent=2, default=json_default)
    return paths


def json_default(value):
    """numpy scalars as Python numbers in json.dump."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")
