"""Reading a .tflite file safely and running it through ai-edge-litert (docs/decisions/002-litert-for-tflite.md).

A corrupt or non-TFLite file must fail with an error that names it, before the interpreter gets a
chance to crash on it: `read_tflite` checks the flatbuffer identifier ("TFL3") and parses the model
with the schema module first. `Classifier` wraps one interpreter for an image classifier with a
fixed batch of 1; it quantizes float pixels into a uint8/int8 input with the model's own scale and
zero point, and dequantizes the scores.

    python -c "from distillery import tflite_model as t; c = t.Classifier.from_file('/tmp/student_int8.tflite'); \
print(c.input_shape, c.input_dtype, c.num_classes)"
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

TFLITE_IDENTIFIER = b"TFL3"


class ModelFileError(ValueError):
    """A file that is not a usable .tflite model, or a model that does not fit the data; names the file."""


def parse_tflite(model_content: bytes, name: str = "<bytes>"):
    """The flatbuffer as a schema object (ModelT); raises ModelFileError naming `name` when it is not one."""
    from tensorflow.lite.tools import flatbuffer_utils

    if len(model_content) < 8 or model_content[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{name}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} flatbuffer identifier)")
    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_content))
    except Exception as error:  # the flatbuffers runtime raises struct/index/unicode errors on garbage
        raise ModelFileError(f"{name}: corrupt TFLite flatbuffer ({type(error).__name__}: {error})") from None
    if not model.subgraphs or not model.subgraphs[0].operators:
        raise ModelFileError(f"{name}: TFLite model without operators")
    return model


def read_tflite(path: str) -> bytes:
    """The bytes of a .tflite file (local or gs://), checked to be a TFLite flatbuffer.

    Raises:
      ModelFileError: naming `path` when it is missing, not TFLite, or corrupt.
    """
    if not tf.io.gfile.exists(path):
        raise ModelFileError(f"{path}: no such file")
    with tf.io.gfile.GFile(path, "rb") as handle:
        content = handle.read()
    parse_tflite(content, path)
    return content


def make_interpreter(model_content: bytes, num_threads: int = 1, name: str = "<bytes>") -> Interpreter:
    """An ai-edge-litert interpreter with its tensors allocated; errors name the model."""
    if num_threads < 1:
        raise ValueError(f"--num_threads must be >= 1, got {num_threads}")
    try:
        interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        raise ModelFileError(f"{name}: the TFLite interpreter refuses this model: {error}") from None
    return interpreter


def random_inputs(interpreter: Interpreter, seed: int = 0) -> list[np.ndarray]:
    """One random array per input tensor, of its dtype and shape (latency does not depend on values)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for detail in interpreter.get_input_details():
        dtype = np.dtype(detail["dtype"])
        shape = tuple(int(side) for side in detail["shape"])
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = max(int(info.min), -128), min(int(info.max), 255)
            arrays.append(rng.integers(low, high + 1, size=shape).astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            arrays.append(rng.uniform(0.0, 1.0, size=shape).astype(dtype))
    return arrays


def quantize_array(values: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float values into an integer tensor: round(x / scale) + zero_point, clipped to the dtype."""
    info = np.iinfo(dtype)
    quantized = np.round(np.asarray(values, np.float64) / scale) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize_array(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(q - zero_point) * scale as float32."""
    return ((np.asarray(values, np.float64) - zero_point) * scale).astype(np.float32)


@dataclasses.dataclass
class Classifier:
    """One interpreter running a batch-1 image classifier: float pixels in, float scores out.

    Attributes:
      interpreter: the ai-edge-litert interpreter (tensors allocated).
      name: the file it came from (for error messages).
    """

    interpreter: Interpreter
    name: str

    @classmethod
    def from_file(cls, path: str, num_threads: int = 1) -> Classifier:
        return cls.from_bytes(read_tflite(path), path, num_threads)

    @classmethod
    def from_bytes(cls, model_content: bytes, name: str = "<bytes>", num_threads: int = 1) -> Classifier:
        parse_tflite(model_content, name)
        classifier = cls(make_interpreter(model_content, num_threads, name), name)
        classifier.check_signature()
        return classifier

    def __post_init__(self) -> None:
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(side) for side in self._input["shape"])

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    @property
    def channels(self) -> int:
        return self.input_shape[3]

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    @property
    def num_classes(self) -> int:
        return int(self._output["shape"][-1])

    def check_signature(self) -> None:
        """Raises ModelFileError unless the model is one [1, H, W, 1 or 3] image in, one [1, C] out."""
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{self.name}: an image classifier has one input and one output, "
                                 f"this model has {len(inputs)} and {len(outputs)}")
        shape, out_shape = self.input_shape, tuple(int(side) for side in self._output["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] not in (1, 3):
            raise ModelFileError(f"{self.name}: input shape {list(shape)} is not [1, height, width, 1 or 3]")
        if len(out_shape) != 2 or out_shape[0] != 1:
            raise ModelFileError(f"{self.name}: output shape {list(out_shape)} is not [1, classes]")

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """[H, W, C] float pixels 0..255 into the model's input tensor [1, H, W, C] of its dtype."""
        pixels = np.asarray(pixels)[None]
        if pixels.shape != self.input_shape:
            raise ModelFileError(f"{self.name}: takes input {list(self.input_shape)}, got {list(pixels.shape)}")
        dtype = self.input_dtype
        if dtype.kind in "iu":
            scale, zero_point = self._input["quantization"]
            if scale == 0:
                return np.clip(np.round(pixels), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
            return quantize_array(pixels, dtype, scale, zero_point)
        return pixels.astype(dtype)

    def predict(self, pixels: np.ndarray, clock: Callable[[], float] = time.perf_counter) -> tuple[np.ndarray, float]:
        """Scores [C] float32 for one image, and the milliseconds `invoke` took on `clock`."""
        self.interpreter.set_tensor(self._input["index"], self.prepare(pixels))
        start = clock()
        self.interpreter.invoke()
        elapsed_ms = (clock() - start) * 1000.0
        scores = self.interpreter.get_tensor(self._output["index"])[0]
        if np.dtype(scores.dtype).kind in "iu":
            scale, zero_point = self._output["quantization"]
            scores = dequantize_array(scores, scale or 1.0, zero_point)
        return scores.astype(np.float32), elapsed_ms
