"""A teacher on LiteRT: converted once to a float32 .tflite at a fixed batch, run by XNNPACK on the CPUs.

On CPU workers the teacher's forward pass is most of the extraction's cost, and the same model under
LiteRT's XNNPACK runs faster than under TensorFlow (docs/decisions/013-litert-teacher-on-cpu-workers.md).
`LiteRTTeacher.from_teacher` converts any loaded Teacher (a .keras file, a SavedModel, the built-in one,
an ensemble: whatever `distillery.teachers.load_teachers` gave) through its traceable `__call__`:
`tf.lite.TFLiteConverter.from_concrete_functions` at [batch, H, W, 3] float32, builtin ops only, no
optimization. The converted model is checked against TensorFlow on one probe batch before it is used,
so a conversion that changes the logits fails at load instead of writing wrong soft labels.

The batch is fixed (a dynamic batch adds shape ops, docs/decisions/002-litert-for-tflite.md); `predict`
takes exactly that batch_size and splits or pads the images into calls of it.

`resolve_runtime("auto")` is litert where TensorFlow sees no GPU, tf where it sees one.

    python -m distillery.litert_teacher builtin:mobilenet_v2_imagenet 32   # converts, compares, times both
"""

from __future__ import annotations

import logging as python_logging
import re
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from distillery import cpus, teachers, tflite_model

RUNTIMES = ("auto", "tf", "litert")
RUNTIME_HELP = ("Where the teacher runs on each worker: litert = converted once per worker process to a float32 "
                ".tflite at the job's batch size and run by LiteRT's XNNPACK on the process's CPUs; tf = "
                "TensorFlow; auto = litert where the worker has no GPU, tf where it has one.")
# Largest |LiteRT - TensorFlow| logit on the probe batch, relative to the largest |logit| (at least 1):
# float32 conversions of the same graph agree far closer; a broken conversion differs by far more.
PROBE_TOLERANCE = 1e-3


class ConversionError(ValueError):
    """A teacher that cannot be converted to (or run as) a float32 builtin-ops .tflite; names the teacher."""


def visible_gpus() -> int:
    """How many GPUs TensorFlow sees in this process."""
    return len(tf.config.list_physical_devices("GPU"))


def resolve_runtime(requested: str, gpu_count: int | None = None) -> str:
    """"tf" or "litert" for a requested runtime: auto = litert without a visible GPU, tf with one."""
    if requested not in RUNTIMES:
        raise ValueError(f"--teacher_runtime must be one of {RUNTIMES}, got {requested!r}")
    if requested != "auto":
        return requested
    return "tf" if (visible_gpus() if gpu_count is None else gpu_count) > 0 else "litert"


def threads_per_process(requested: int, processes_per_machine: int, cpu_count: int) -> int:
    """XNNPACK threads for one worker process: `requested` when > 0, else the machine's `cpu_count` CPUs divided among
    the worker processes that share them (`processes_per_machine`; 0 = one process per CPU, Dataflow's
    layout), at least 1. One process with all cores and several single-threaded ones keep the cores
    equally busy on the forward pass alone, but only the latter let every core also decode and crop
    between its forward passes (docs/results.md "Extraction")."""
    if requested > 0:
        return requested
    if processes_per_machine <= 0:
        return 1
    return max(1, cpu_count // processes_per_machine)


def _teacher_name(teacher: Any) -> str:
    return "+".join(teacher.names)


def _conversion_failed(teacher: Any, why: str) -> ConversionError:
    return ConversionError(f"teacher {_teacher_name(teacher)}: cannot run under LiteRT: {why}; "
                           "run it with --teacher_runtime=tf")


def convert_teacher(teacher: Any, batch_size: int) -> tuple[bytes, tf.types.experimental.ConcreteFunction]:
    """The float32 .tflite bytes of `teacher` at a fixed [batch_size, H, W, 3] input, builtin ops only,
    and the TensorFlow concrete function it was converted from (for the probe check).

    Raises:
      ConversionError: naming the teacher when the converter refuses its graph.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = teacher.input_size
    signature = [tf.TensorSpec([batch_size, height, width, 3], tf.float32, name="images")]
    function = tf.function(teacher.__call__, input_signature=signature)
    concrete = function.get_concrete_function()
    module = tf.Module()  # what the converter saves with the function (it lowers it to a SavedModel)
    module.logits = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # Saving the module sets absl's verbosity and restores it as an explicit level: where absl's flags were
    # never parsed (a Beam worker) that turns the absl logger to WARNING and hides every INFO line after it
    # (the progress lines), so the logger's own level is put back.
    absl_logger = python_logging.getLogger("absl")
    absl_level = absl_logger.level
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # pylint: disable=broad-except  # ConverterError, ValueError, saving errors ...
        raise _conversion_failed(teacher, f"the TFLite converter (builtin ops only) refused it: "
                                          f"{converter_complaint(error)}") from None
    finally:
        absl_logger.setLevel(absl_level)
    return flatbuffer, concrete


def converter_complaint(error: Exception) -> str:
    """The gist of a converter error: the TensorFlow ops without a builtin TFLite kernel when it names
    them, else the start of its message (MLIR errors run to pages)."""
    text = " ".join(str(error).split())
    missing = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)))
    if missing:
        return f"ops with no builtin TFLite kernel: {', '.join(missing)}"
    return f"{type(error).__name__}: {text[:400]}"


class LiteRTTeacher:
    """The Teacher interface over one LiteRT interpreter compiled for a fixed batch.

    Attributes:
      names, input_size, num_classes: as the TensorFlow teacher it was converted from.
      batch_size: the compiled batch; `predict` must be called with it.
      num_threads: XNNPACK's threads.
      runtime: "litert".
    """

    runtime = "litert"

    def __init__(self, names: Sequence[str], input_size: tuple[int, int], num_classes: int, model_content: bytes,
                 batch_size: int, num_threads: int):
        self.names = tuple(names)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self.model_bytes = len(model_content)
        name = f"teacher {'+'.join(self.names)} (.tflite)"
        self._interpreter = tflite_model.make_interpreter(model_content, self.num_threads, name)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        expected_in = (self.batch_size, *self.input_size, 3)
        if tuple(self._input["shape"]) != expected_in or tuple(self._output["shape"]) != (self.batch_size,
                                                                                        self.num_classes):
            raise tflite_model.ModelFileError(f"{name}: takes {list(self._input['shape'])} and gives "
                                              f"{list(self._output['shape'])}, expected {list(expected_in)} and "
                                              f"{[self.batch_size, self.num_classes]}")
        self._lock = threading.Lock()  # one interpreter, possibly shared by several DoFn threads

    def __repr__(self) -> str:
        return (f"LiteRTTeacher(names={self.names}, input_size={self.input_size}, num_classes={self.num_classes}, "
                f"batch_size={self.batch_size}, num_threads={self.num_threads})")

    @classmethod
    def from_teacher(cls, teacher: Any, batch_size: int, num_threads: int | None = None,
                     check: bool = True) -> LiteRTTeacher:
        """Converts a loaded TensorFlow Teacher (see `convert_teacher`) and, with `check`, compares the two
        on one random probe batch.

        Raises:
          ConversionError: naming the teacher when it does not convert, load or agree with TensorFlow.
        """
        start = time.perf_counter()
        flatbuffer, concrete = convert_teacher(teacher, batch_size)
        try:
            converted = cls(teacher.names, teacher.input_size, teacher.num_classes, flatbuffer, batch_size,
                            num_threads or cpus.available_cpus())
        except tflite_model.ModelFileError as error:
            raise _conversion_failed(teacher, str(error)) from None
        if check:
            probe = np.random.default_rng(0).uniform(0, 255, (batch_size, *teacher.input_size, 3)).astype(np.float32)
            expected = concrete(tf.constant(probe)).numpy()
            got = converted.predict(probe, batch_size=batch_size)
            difference = float(np.max(np.abs(got - expected)))
            scale = max(1.0, float(np.max(np.abs(expected))))
            if not difference <= PROBE_TOLERANCE * scale:  # also refuses NaN
                raise _conversion_failed(teacher, f"its .tflite logits differ from TensorFlow's by {difference:.3g} "
                                                  f"on a probe batch (allowed {PROBE_TOLERANCE * scale:.3g})")
        logging.info("teacher %s: converted to a float32 .tflite (%d bytes) at batch %d in %.1f s; LiteRT runs it "
                     "on %d thread(s)", _teacher_name(teacher), len(flatbuffer), batch_size,
                     time.perf_counter() - start, converted.num_threads)
        return converted

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()  # releases the GIL: other threads decode meanwhile
            return self._interpreter.get_tensor(self._output["index"])

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits [N, C] float32 of images [N, H, W, 3] (0..255), in calls of the compiled batch (the last
        padded with zeros). Images of another size are resized first, as the TensorFlow teacher does.

        Raises:
          ValueError: `batch_size` is not the compiled batch, or the images are not [N, H, W, 3].
        """
        if batch_size != self.batch_size:
            raise ValueError(f"teacher {self.names}: LiteRT runs it at its compiled batch {self.batch_size}, "
                             f"predict got batch_size={batch_size}")
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"teacher {self.names}: images must be [N, H, W, 3], got shape {images.shape}")
        if tuple(images.shape[1:3]) != self.input_size:
            images = teachers.resize_to(tf.constant(images), self.input_size).numpy()
        count = len(images)
        outputs = []
        for start in range(0, count, self.batch_size):
            batch = images[start:start + self.batch_size]
            if len(batch) < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - len(batch), *batch.shape[1:]), np.float32)])
            outputs.append(self._invoke(np.ascontiguousarray(batch)))
        if not outputs:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(outputs, axis=0)[:count].astype(np.float32, copy=False)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """Logits of a batch as a TensorFlow op (NumPy inside): [N, H, W, 3] float32 0..255 -> [N, C]."""
        logits = tf.numpy_function(lambda array: self.predict(array, self.batch_size), [tf.cast(images, tf.float32)],
                                   tf.float32, stateful=False)
        logits.set_shape([images.shape[0], self.num_classes])
        return logits


def with_runtime(teacher: Any, runtime: str, batch_size: int, num_threads: int | None = None) -> Any:
    """`teacher` itself for runtime tf, its LiteRT conversion for litert; auto is resolved here, in the
    process that will run it (a Beam worker)."""
    resolved = resolve_runtime(runtime)
    if resolved == "tf":
        logging.info("teacher %s: runs on TensorFlow (--teacher_runtime=%s, %d GPU(s) visible)",
                     _teacher_name(teacher), runtime, visible_gpus())
        return teacher
    return LiteRTTeacher.from_teacher(teacher, batch_size, num_threads)


def main(argv: Sequence[str]) -> None:
    spec = argv[1] if len(argv) > 1 else teachers.BUILTIN_PREFIX + teachers.BUILTIN_TEACHERS[0]
    batch_size = int(argv[2]) if len(argv) > 2 else 32
    teacher = teachers.load_teachers([spec])
    converted = LiteRTTeacher.from_teacher(teacher, batch_size)
    views = np.random.default_rng(1).uniform(0, 255, (2 * batch_size, *teacher.input_size, 3)).astype(np.float32)
    for runtime, model in (("tf", teacher), ("litert", converted)):
        model.predict(views[:batch_size], batch_size=batch_size)  # warm-up (tracing, XNNPACK packing)
        start = time.perf_counter()
        logits = model.predict(views, batch_size=batch_size)
        print(f"{runtime}: {len(views) / (time.perf_counter() - start):.1f} images/s, logits[0, :3] {logits[0, :3]}")
    print(converted)


if __name__ == "__main__":
    main(sys.argv)
