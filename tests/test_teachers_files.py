"""File teachers (.keras, SavedModel), ensembles, safe_mode and bad specs.

Tiny Keras models stand in for real teachers: each is saved, loaded back as a teacher, and its logits
are compared with a direct call of the model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from distillery import teachers


def tiny_model(size: int = 8, num_classes: int = 5, seed: int = 0, softmax: bool = False) -> keras.Model:
    """A small CNN on raw pixels 0..255 with its normalization inside (as a file teacher must)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, outputs)


def pixels(count: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model saved as .keras and exported as a SavedModel (the trainer's DIR/saved_model layout)."""
    directory = tmp_path_factory.mktemp("teacher_run")
    model = tiny_model()
    model.save(str(directory / "teacher.keras"))
    model.export(str(directory / "saved_model"), verbose=False)
    return model, directory


def test_keras_file_round_trip(saved):
    model, directory = saved
    teacher = teachers.load_teacher(str(directory / "teacher.keras"))
    assert teacher.names == ("teacher.keras",)
    assert teacher.input_size == (8, 8) and teacher.num_classes == 5
    images = pixels(7, 8)
    expected = model(images, training=False).numpy()
    np.testing.assert_allclose(teacher(tf.constant(images)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(teacher.predict(images, batch_size=3), expected, atol=1e-5)


def test_saved_model_round_trip(saved):
    model, directory = saved
    teacher = teachers.load_teacher(str(directory / "saved_model"))
    assert teacher.names == (f"{directory.name}/saved_model",)
    assert teacher.input_size == (8, 8) and teacher.num_classes == 5
    images = pixels(7, 8)
    expected = model(images, training=False).numpy()
    np.testing.assert_allclose(teacher.predict(images, batch_size=4), expected, atol=1e-5)

    @tf.function
    def traced(batch):  # as the trainer's online mode calls it, inside its train step
        return teacher(batch)

    np.testing.assert_allclose(traced(tf.constant(images)).numpy(), expected, atol=1e-5)


def test_softmax_outputs_become_logits(tmp_path):
    """A softmax teacher gives log-probabilities: same softmax as its outputs, in both file formats."""
    model = tiny_model(softmax=True)
    model.save(str(tmp_path / "probs.keras"))
    model.export(str(tmp_path / "probs_export"), verbose=False)
    images = pixels(4, 8)
    probabilities = model(images, training=False).numpy()
    for spec in (tmp_path / "probs.keras", tmp_path / "probs_export"):
        logits = teachers.load_teacher(str(spec)).predict(images)
        np.testing.assert_allclose(logits, np.log(probabilities), atol=1e-5)
        np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probabilities, atol=1e-6)


def test_ensemble_is_the_mean_of_logits(saved, tmp_path):
    model_a, directory = saved
    model_b = tiny_model(size=12, seed=3)  # another input size: resized inside the ensemble's call
    model_b.save(str(tmp_path / "b.keras"))
    ensemble = teachers.load_teachers([str(directory / "teacher.keras"), str(tmp_path / "b.keras")])
    assert ensemble.names == ("teacher.keras", "b.keras")
    assert ensemble.input_size == (8, 8) and ensemble.num_classes == 5
    images = pixels(3, 8)
    resized = tf.image.resize(images, (12, 12), method="bilinear", antialias=True)
    expected = (model_a(images, training=False).numpy() + model_b(resized, training=False).numpy()) / 2
    np.testing.assert_allclose(ensemble.predict(images), expected, atol=1e-6)
    # Exactly the mean of the members as teachers.
    members = [teachers.load_teacher(str(directory / "teacher.keras")), teachers.load_teacher(str(tmp_path / "b.keras"))]
    mean = (members[0].predict(images) + members[1].predict(images)) / 2
    np.testing.assert_array_equal(ensemble.predict(images), mean)
    # One spec: that teacher itself.
    assert teachers.load_teachers([str(directory / "teacher.keras")]).names == ("teacher.keras",)


def test_ensemble_refuses_different_class_counts(saved, tmp_path):
    _, directory = saved
    tiny_model(num_classes=7).save(str(tmp_path / "seven.keras"))
    with pytest.raises(ValueError, match=r"same number of classes.*teacher.keras: 5.*seven.keras: 7"):
        teachers.load_teachers([str(directory / "teacher.keras"), str(tmp_path / "seven.keras")])


def test_lambda_layer_is_refused_by_safe_mode(tmp_path):
    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    path = str(tmp_path / "lambda.keras")
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match=r"lambda\.keras: refused by Keras safe_mode"):
        teachers.load_teacher(path)


@pytest.mark.parametrize("kind", ["text_named_keras", "empty_dir", "missing", "other_extension", "dir_of_junk"])
def test_not_a_model_names_the_path(tmp_path, kind):
    if kind == "text_named_keras":
        path = tmp_path / "x.keras"
        path.write_text("not a model")
        error = ValueError
    elif kind == "empty_dir":
        path = tmp_path / "empty"
        path.mkdir()
        error = ValueError
    elif kind == "missing":
        path = tmp_path / "nowhere" / "model.keras"
        error = FileNotFoundError
    elif kind == "other_extension":
        path = tmp_path / "weights.h5"
        path.write_bytes(b"\x89HDF\r\n")
        error = ValueError
    else:
        path = tmp_path / "junk"
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"\x00garbage")
        error = ValueError
    with pytest.raises(error) as raised:
        teachers.load_teacher(str(path))
    assert str(path) in str(raised.value)


def test_unknown_builtin_names_itself():
    with pytest.raises(ValueError, match=r"builtin:resnet_9000.*known: builtin:mobilenet_v2_imagenet"):
        teachers.load_teacher("builtin:resnet_9000")


def test_predict_rejects_wrong_rank(saved):
    _, directory = saved
    teacher = teachers.load_teacher(str(directory / "teacher.keras"))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        teacher.predict(np.zeros((8, 8, 3), np.float32))
    assert teacher.predict(np.zeros((0, 8, 8, 3), np.float32)).shape == (0, 5)


def test_resize_to_a_static_size_is_tensorflows_antialiased_resize_as_products():
    images = np.random.default_rng(3).uniform(0, 255, (2, 64, 56, 3)).astype(np.float32)
    for size in [(48, 48), (32, 40), (96, 80), (64, 20)]:  # down, both down, up, one side each way
        expected = tf.image.resize(images, size, method="bilinear", antialias=True).numpy()
        np.testing.assert_allclose(teachers.resize_to(tf.constant(images), size).numpy(), expected, atol=1e-3)
    assert teachers.resize_to(tf.constant(images), (64, 56)).shape == (2, 64, 56, 3)
