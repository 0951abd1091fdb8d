"""TFLite conversion of a student: float32, float16, dynamic-range or full-integer int8.

A Distillery student is a Keras 3 functional model whose first layers do its own preprocessing, so
its input is raw RGB pixels 0..255. This module converts it the way a phone runs it:

- from a fixed batch-1 signature `[1, S, S, C]` (a dynamic batch adds SHAPE / STRIDED_SLICE / PACK
  ops to the graph, docs/decisions/002-litert-for-tflite.md), exported through `keras.export.ExportArchive` (handing a
  Keras 3 model's concrete function straight to the converter leaves its variables as
  READ_VARIABLE ops, which the int8 calibrator cannot run);
- a mixed-precision model (`mixed_float16` / `mixed_bfloat16` policy) is rebuilt in float32 first
  (a clone under the float32 policy that receives the same weights);
- `int8` is full-integer quantization: every kernel and activation int8, and the model's input and
  output uint8 (default) or int8. The calibration images are views of soft-label records (view 0,
  made by `distillery.record_pixels`, the decoding and cropping extraction and training use). The first
  calibration image gets one 0 pixel and one 255 pixel, which pins the calibrated input range to
  exactly 0..255: the uint8 input then has scale 1 and zero point 0 (int8: scale 1, zero point
  -128), so a phone feeds raw camera pixels with no arithmetic.

    distillery-quantize --model=runs/demo/student/student.keras --output=/tmp/student_int8.tflite \
        --mode=int8 --calibration='runs/demo/soft_labels/train-*' --calibration_steps=100
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

from distillery import atomic_files, record_pixels, records, saved_model_check

MODES = ("float32", "float16", "dynamic", "int8")
IO_TYPES = ("uint8", "int8")


class QuantizeError(ValueError):
    """A model or calibration input that cannot be converted; the message names the file or flag."""


def load_model(path: str, trust_saved_model: bool = False) -> keras.Model:
    """Loads a student from a .keras file (Keras 3, safe_mode) or a SavedModel directory, whose graph is
    first checked to hold only classifier ops (`distillery.saved_model_check`) unless `trust_saved_model`.

    Raises:
      QuantizeError: naming `path` when it is missing, not a model, or a SavedModel that the check refuses.
    """
    if not tf.io.gfile.exists(path):
        raise QuantizeError(f"--model: {path} does not exist")
    if tf.io.gfile.isdir(path) and not trust_saved_model:
        try:
            saved_model_check.check_saved_model(path)
        except (saved_model_check.UntrustedSavedModelError, OSError) as error:
            raise QuantizeError(f"--model: {error}") from None
    try:
        if tf.io.gfile.isdir(path):
            return _wrap_saved_model(path)
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a file that is not a model
        raise QuantizeError(f"--model: {path} is not a loadable Keras model: {error}") from None


def _wrap_saved_model(path: str) -> keras.Model:
    """A functional Keras model around a SavedModel's serving_default signature (one image input)."""
    signature = tf.saved_model.load(path).signatures["serving_default"]
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1 or specs[0].shape.rank != 4:
        raise ValueError(f"serving_default must take one [batch, H, W, C] image tensor, takes {specs}")
    inputs = keras.Input(tuple(specs[0].shape[1:]), name="images")
    outputs = keras.layers.TFSMLayer(path, call_endpoint="serving_default")(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ValueError(f"serving_default must return one logits tensor, returns {sorted(outputs)}")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)


def is_mixed_precision(model: keras.Model) -> bool:
    """True when any layer computes in a dtype other than its float32 variables (mixed policy)."""
    for layer in model.layers if hasattr(model, "layers") else []:
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and policy.compute_dtype != policy.variable_dtype:
            return True
    return False


def as_float32(model: keras.Model) -> keras.Model:
    """The model itself, or for a mixed-precision model a float32 clone with the same weights."""
    if not is_mixed_precision(model):
        return model

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def input_shape_of(model) -> tuple[int, int, int]:
    """(height, width, channels) of a single-input image model; raises QuantizeError otherwise."""
    shape = None
    if hasattr(model, "inputs") and model.inputs:
        if len(model.inputs) != 1:
            raise QuantizeError(f"a student has one image input; this model has {len(model.inputs)}")
        shape = tuple(model.inputs[0].shape)
    if shape is None or len(shape) != 4 or any(side is None for side in shape[1:]):
        raise QuantizeError(
            f"the model's input must be [batch, height, width, channels] with a fixed size, got {shape}")
    return int(shape[1]), int(shape[2]), int(shape[3])


def calibration_images(pattern: str, size: tuple[int, int], steps: int, channels: int = 3) -> list[np.ndarray]:
    """Up to `steps` calibration inputs [1, H, W, C] float32 0..255 from soft-label records.

    Each is view 0 of a record (the centre crop when the extraction stored one view) as
    `distillery.record_pixels.stored_view` makes it, what the student saw in training (to ~5e-3 of 255). Records are
    read through `distillery.records`; an image that is not stored inline is read from its `image/path`.

    Raises:
      QuantizeError: when no record matches, a record cannot be read, or the model's channels are not 1 or 3.
      images.ImageDecodeError: when a record's image does not decode (the message says why).
    """
    if steps < 1:
        raise QuantizeError(f"--calibration_steps must be >= 1, got {steps}")
    batch: list[np.ndarray] = []
    try:
        for record in records.read_records(pattern, limit=steps):
            batch.append(record_pixels.stored_view(record, 0, size, channels)[None])
    except (FileNotFoundError, records.RecordError) as error:
        raise QuantizeError(f"--calibration: {error}") from None
    except record_pixels.UnsupportedChannelsError as error:
        raise QuantizeError(str(error)) from None
    if not batch:
        raise QuantizeError(f"--calibration: {pattern} holds no records")
    return batch


def _pin_input_range(images: list[np.ndarray]) -> list[np.ndarray]:
    first = images[0].copy()
    first[0, 0, 0, :] = 0.0
    first[0, 0, -1, :] = 255.0
    return [first] + list(images[1:])


def _export_batch_one(model, export_dir: str) -> None:
    height, width, channels = input_shape_of(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([1, height, width, channels], tf.float32, name="images")])
    archive.write_out(export_dir, verbose=False)


def convert(model: keras.Model, mode: str, calibration_images: Iterable[np.ndarray] | None = None,
            io_type: str = "uint8") -> bytes:
    """Converts a student to a .tflite flatbuffer with a fixed batch of 1.

    Args:
      model: Keras 3 functional model, input [None or 1, H, W, C] raw pixels 0..255.
      mode: "float32" (no optimization), "float16" (weights stored as float16), "dynamic"
        (int8 weights, float activations) or "int8" (full integer, calibrated).
      calibration_images: for "int8": [1, H, W, C] float32 arrays (`calibration_images()`).
      io_type: for "int8": dtype of the model's input and output, "uint8" or "int8".

    Returns:
      The .tflite model bytes.

    Raises:
      QuantizeError: unknown mode or io_type, or int8 without calibration images.
    """
    if mode not in MODES:
        raise QuantizeError(f"--mode must be one of {MODES}, got {mode!r}")
    if io_type not in IO_TYPES:
        raise QuantizeError(f"--io_type must be one of {IO_TYPES}, got {io_type!r}")
    calibration = list(calibration_images) if calibration_images is not None else []
    if mode == "int8" and not calibration:
        raise QuantizeError("--mode=int8 needs calibration images (--calibration=GLOB)")
    model = as_float32(model)
    with tempfile.TemporaryDirectory(prefix="distillery_export_") as export_dir:
        _export_batch_one(model, export_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(export_dir)
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            pinned = _pin_input_range(calibration)
            converter.representative_dataset = lambda: ([image] for image in pinned)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8 if io_type == "uint8" else tf.int8
            converter.inference_output_type = converter.inference_input_type
        start = time.perf_counter()
        flatbuffer = converter.convert()
        logging.info("converted to %s in %.1f s: %d bytes", mode, time.perf_counter() - start, len(flatbuffer))
    return flatbuffer


def quantize_file(model_path: str, output_path: str, mode: str, calibration: str | None = None,
                  calibration_steps: int = 100, io_type: str = "uint8",
                  log: Callable[[str], None] = print, trust_saved_model: bool = False) -> int:
    """The whole `distillery-quantize` job: load, (calibrate), convert, write. Returns the size in bytes.

    The .tflite file is written under a temporary name in its folder and renamed into place
    (distillery/atomic_files.py), so a failure never leaves a truncated model where the last one was.

    Raises:
      QuantizeError: naming the flag or file at fault (an unwritable --output folder too), before the
        conversion starts.
    """
    if mode not in MODES:
        raise QuantizeError(f"--mode must be one of {MODES}, got {mode!r}")
    if mode == "int8" and not calibration:
        raise QuantizeError("--mode=int8 needs --calibration=GLOB (soft-label records)")
    try:
        atomic_files.check_writable(os.path.dirname(output_path), "--output", output_path)
    except atomic_files.OutputFolderError as error:
        raise QuantizeError(str(error)) from None
    model = load_model(model_path, trust_saved_model)
    height, width, channels = input_shape_of(model)
    calibration_batch = None
    if mode == "int8":
        start = time.perf_counter()
        calibration_batch = calibration_images(calibration, (height, width), calibration_steps, channels)
        elapsed = time.perf_counter() - start
        log(f"calibration: {len(calibration_batch)} images from {calibration} "
            f"({len(calibration_batch) / max(elapsed, 1e-9):.1f} images/s)")
    if is_mixed_precision(model):
        log("mixed-precision model: rebuilt in float32 before conversion")
    flatbuffer = convert(model, mode, calibration_batch, io_type)
    with atomic_files.staged_file(output_path, "wb") as handle:
        handle.write(flatbuffer)
    log(f"wrote {output_path}: {mode}, {len(flatbuffer)} bytes, input [1, {height}, {width}, {channels}]")
    return len(flatbuffer)


def iterate_flatbuffer_tensor_types(flatbuffer: bytes) -> Iterator[tuple[str, str, str]]:
    """(op name, role 'input<i>'/'output<i>', tensor type name) for every op tensor of subgraph 0."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    for operator in subgraph.operators:
        op_name = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
        for role, indices in (("input", operator.inputs), ("output", operator.outputs)):
            for position, index in enumerate(indices):
                if index >= 0:
                    yield op_name, f"{role}{position}", flatbuffer_utils.type_to_name(subgraph.tensors[index].type)
