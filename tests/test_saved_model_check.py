"""The SavedModel op check: a model whose serving function reads and writes files is refused before
TensorFlow loads it (nothing is read or written), the project's own exports pass, trust loads anything.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_saved_model_check.py
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2
from tensorflow.python.saved_model import loader_impl

from compress import factorize_job, quantize, quantize_job
from distillery import cli, mobilenet_v2_torchvision, saved_model_check, teachers
from pipelines import extraction
from pipelines.teacher_inference import TeacherLoader
from trainer import loop, students
from trainer.train_config import TrainConfig


class FileThief(tf.Module):
    """A 'classifier' whose serving function copies a file it was given to another path."""

    def __init__(self, secret: str, canary: str):
        super().__init__()
        self.kernel = tf.Variable(tf.ones([3, 5]))
        self.secret, self.canary = secret, canary

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def serve(self, images):
        stolen = tf.io.read_file(self.secret)
        tf.io.write_file(self.canary, stolen)
        logits = tf.reduce_mean(images, axis=[1, 2]) @ self.kernel
        return logits + 0.0 * tf.cast(tf.strings.length(stolen), tf.float32)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(SavedModel dir, the file its serving function reads, the canary it would write)."""
    root = tmp_path_factory.mktemp("hostile")
    secret, canary = root / "secret.txt", root / "canary.txt"
    secret.write_text("not for the model")
    thief = FileThief(str(secret), str(canary))
    tf.saved_model.save(thief, str(root / "model"), signatures={"serving_default": thief.serve})
    assert not canary.exists()
    return str(root / "model"), secret, canary


@pytest.fixture
def no_load(monkeypatch):
    """Fails the test if TensorFlow is asked to load a SavedModel."""
    def refuse(*args, **kwargs):
        raise AssertionError("tf.saved_model.load ran on a model the check should have refused")

    monkeypatch.setattr(tf.saved_model, "load", refuse)


def test_a_file_reading_and_writing_model_is_refused_before_loading(hostile, no_load):
    path, _, canary = hostile
    with pytest.raises(ValueError) as raised:
        teachers.load_teacher(path)
    message = str(raised.value)
    assert "ReadFile (reads a file)" in message and "WriteFile (writes a file)" in message
    assert os.path.join(path, "saved_model.pb") in message and "--trust_saved_model" in message
    with pytest.raises(ValueError, match="ReadFile"):
        TeacherLoader((path,))()  # what extraction's workers call
    with pytest.raises(ValueError, match="ReadFile"):
        loop._load_teacher(path)  # distillery-train --teacher  # pylint: disable=protected-access
    with pytest.raises(quantize.QuantizeError, match=r"--model: .*saved_model\.pb: .*WriteFile"):
        quantize.load_model(path)
    with pytest.raises(factorize_job.JobError, match=r"--model: .*saved_model\.pb: .*ReadFile"):
        factorize_job.load_student(path)  # distillery-factorize --model
    assert not canary.exists()


def test_trust_loads_the_hostile_model(hostile):
    path, secret, canary = hostile
    teacher = teachers.load_teacher(path, trust_saved_model=True)
    assert (teacher.input_size, teacher.num_classes) == ((8, 8), 5)
    assert canary.read_text() == secret.read_text()  # loading ran it: exactly what the check prevents
    canary.unlink()
    assert TeacherLoader((path,), trust_saved_model=True)().num_classes == 5
    assert isinstance(quantize.load_model(path, trust_saved_model=True), keras.Model)
    canary.unlink(missing_ok=True)
    assert isinstance(factorize_job.load_student(path, trust_saved_model=True), keras.Model)
    canary.unlink(missing_ok=True)


def test_each_command_has_the_flag_once():
    for config_class in (extraction.ExtractConfig, TrainConfig, quantize_job.QuantizeConfig, factorize_job.JobConfig):
        names = [cli.flag_name(field) for field in cli.flag_fields(config_class)]
        assert names.count("trust_saved_model") == 1, config_class


@pytest.mark.slow
@pytest.mark.parametrize("student", students.STUDENTS)
def test_the_trainers_exported_students_pass(tmp_path, student):
    config = TrainConfig(train_pattern="unused", model_dir=str(tmp_path), student=student, width=0.35, image_size=32)
    model = students.build_student(student, config.width, config.image_size, 10)
    loop.save_outputs(model, config, 10, str(tmp_path), {})
    saved_model_check.check_saved_model(str(tmp_path / "saved_model"))


def test_keras_teachers_pass(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x)).export(str(tmp_path / "tiny"), verbose=False)
    mobilenet_v2_torchvision.build_mobilenet_v2((32, 32)).export(str(tmp_path / "builtin"), verbose=False)
    for name in ("tiny", "builtin"):
        saved_model_check.check_saved_model(str(tmp_path / name))
    teacher = teachers.load_teacher(str(tmp_path / "tiny"))  # checked, then loaded as before
    assert teacher.predict(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 5)


@pytest.fixture(scope="module")
def exported_meta_graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "saved_model"
    students.build_student("small_cnn", 1.0, 32, 3).export(str(path), verbose=False)
    return loader_impl.parse_saved_model(str(path)).meta_graphs[0]


def _copy(meta_graph):
    copy = type(meta_graph)()
    copy.CopyFrom(meta_graph)
    return copy


def _serving_function(meta_graph):
    library = meta_graph.graph_def.library.function
    return next(function for function in library if "traced" not in function.signature.name
                and any(node.op == "Conv2D" for node in function.node_def))


def test_saver_ops_pass_only_in_the_savers_own_functions(exported_meta_graph):
    assert saved_model_check.refused_ops(exported_meta_graph) == []
    library = exported_meta_graph.graph_def.library.function
    assert any(node.op == "SaveV2" for function in library for node in function.node_def)
    smuggled = _copy(exported_meta_graph)
    serving = _serving_function(smuggled)
    serving.node_def.append(node_def_pb2.NodeDef(name="smuggled", op="SaveV2"))
    assert saved_model_check.refused_ops(smuggled) == [("SaveV2", f"function {serving.signature.name}")]


def test_a_saver_def_pointing_at_serving_does_not_lend_it_the_saver_ops(exported_meta_graph):
    hijacked = _copy(exported_meta_graph)
    serving = _serving_function(hijacked)
    serving.node_def.append(node_def_pb2.NodeDef(name="smuggled", op="SaveV2"))
    # The save function is whatever saver_def names: here the node that serves the signature.
    hijacked.saver_def.save_tensor_name = next(iter(hijacked.signature_def["serving_default"].outputs.values())).name
    assert ("SaveV2", f"function {serving.signature.name}") in saved_model_check.refused_ops(hijacked)


def test_a_top_level_node_off_the_list_is_refused(exported_meta_graph):
    odd = _copy(exported_meta_graph)
    odd.graph_def.node.append(node_def_pb2.NodeDef(name="files", op="MatchingFiles"))
    assert saved_model_check.refused_ops(odd) == [("MatchingFiles", "the graph")]
