"""The teacher(s) inside Beam workers: one model per worker process, called on fixed-size batches of views.

Why our own DoFn (pipelines/extract_shard.py) with Beam's `Shared` handle and not RunInference:

- RunInference's TensorFlow handlers (`apache_beam.ml.inference.tensorflow_inference`) import
  tensorflow_hub and load models with `tf.keras.models.load_model`, which cannot load a Keras 3
  SavedModel (docs/decisions/006-tfds-and-no-runinference.md); a custom ModelHandler would be needed in
  any case.
- Our unit of batching is the *view*, not the element: an image carries V views, a call stacks the views
  of several images, and the logits are split back per image; an image whose logits come out non-finite
  becomes a dead letter while the rest of the call is written.
- A work unit is read whole inside one DoFn call, so no image bytes or pixels cross a shuffle.
- `Shared` holds exactly one loaded teacher per worker process, across the DoFn instances that
  Dataflow runs in several threads of one process, and across bundles. The launcher acquires the same
  handle first (to check the specs and learn the input size before any heavy work), so a local
  in-process FnApiRunner run loads the model once in total.

    python -c "from apache_beam.utils import shared; from pipelines import teacher_inference as t; \
print(t.load_shared_teacher(t.TeacherLoader(('builtin:mobilenet_v2_imagenet',)), shared.Shared())[1])"
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from apache_beam.utils import shared

METRICS_NAMESPACE = "distillery.extract"


@dataclasses.dataclass(frozen=True)
class TeacherLoader:
    """Picklable recipe for the teacher: the specs (one, or several = an ensemble of mean logits), whether
    a SavedModel among them is loaded without its op check (--trust_saved_model), the runtime
    (--teacher_runtime: auto is resolved where the loader runs, on the worker; the job passes its flag,
    whose default is auto), the batch every call has (litert compiles the model for it), and LiteRT's
    threads: `threads` (--teacher_threads), or with 0 the worker's CPUs divided among the
    `processes_per_machine` worker processes that share them (0 = one per CPU; see
    `pipelines.extraction.worker_processes_per_machine`)."""

    specs: tuple[str, ...]
    trust_saved_model: bool = False
    runtime: str = "tf"
    batch_size: int = 32
    threads: int = 0
    processes_per_machine: int = 1

    def __call__(self):
        from distillery import cpus, litert_teacher, teachers  # pylint: disable=import-outside-toplevel  # TF loads on the worker

        teacher = teachers.load_teachers(list(self.specs), trust_saved_model=self.trust_saved_model)
        threads = litert_teacher.threads_per_process(self.threads, self.processes_per_machine, cpus.available_cpus())
        return litert_teacher.with_runtime(teacher, self.runtime, self.batch_size, threads)

    @property
    def tag(self) -> str:
        return ("teachers:" + "|".join(self.specs) + (" (trusted)" if self.trust_saved_model else "")
                + f" runtime={self.runtime} batch={self.batch_size} threads={self.threads}"
                + f"/{self.processes_per_machine}")


def runtime_of(teacher: Any) -> str:
    """The runtime a loaded teacher runs on: "litert" for a LiteRT teacher, else "tf"."""
    return str(getattr(teacher, "runtime", "tf"))


class _Holder:
    """Shared needs a weak-referenceable object; a Teacher is one, but fakes and tuples may not be."""

    def __init__(self, teacher: Any):
        self.teacher = teacher


def load_shared_teacher(loader: Callable[[], Any], handle: shared.Shared, tag: str | None = None) -> tuple[Any, Any]:
    """The process-wide teacher of `handle`, loading it on first use.

    Returns:
      (holder, teacher): keep `holder` referenced as long as the teacher is in use (Shared keeps the
      object alive only while someone holds it).
    """
    tag = tag if tag is not None else getattr(loader, "tag", repr(loader))
    holder = handle.acquire(lambda: _Holder(loader()), tag=tag)
    return holder, holder.teacher


@dataclasses.dataclass
class ViewedImage:
    """One decoded image with the views the teacher will see.

    Attributes:
      image_id, label, origin: from the source (origin = where the image came from).
      crops: [V, 4] float32 boxes on the record grid; flips: [V] bool.
      pixels: [V, H, W, 3] float32 views in 0..255 (dropped after the teacher ran).
      encoded_image: the bounded re-encoding to store, or b"".
    """

    image_id: str
    label: int
    origin: str
    crops: np.ndarray
    flips: np.ndarray
    pixels: np.ndarray | None
    encoded_image: bytes = b""


class Progress:
    """Per-process progress: a log line every `every` images with the images/s since the first batch."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Counts from zero again (a new job in this process)."""
        with self._lock:
            self.images, self.views, self.batches = 0, 0, 0
            self._start, self._next_log = None, None

    def start(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Marks the start of the first batch of this process (the rate counts from here)."""
        with self._lock:
            if self._start is None:
                self._start = clock()

    def add(self, images: int, views: int, every: int, clock: Callable[[], float] = time.monotonic) -> str | None:
        """Counts a finished batch; returns the progress line when another `every` images are done."""
        with self._lock:
            now = clock()
            if self._start is None:
                self._start = now
            if self._next_log is None:
                self._next_log = every
            self.images += images
            self.views += views
            self.batches += 1
            if every <= 0 or self.images < self._next_log:
                return None
            self._next_log = (self.images // every + 1) * every
            elapsed = max(now - self._start, 1e-9)
            return (f"extract: {self.images} images, {self.views} views, {self.batches} batches in worker "
                    f"process {os.getpid()}; {self.images / elapsed:.1f} images/s")


progress = Progress()  # this process's: every work unit it extracts adds to it


def reset_progress() -> None:
    """Starts this process's progress count over: for a job launched in a process that ran one before
    (the in-process FnApiRunner's workers live in the launcher), whose counts and next log threshold
    would otherwise carry over and hide the new job's first lines. Remote workers start fresh anyway."""
    progress.reset()


def run_fixed_batches(teacher: Any, views: np.ndarray, batch_size: int) -> np.ndarray:
    """[N, C] logits of [N, H, W, 3] views, always calling the teacher on exactly `batch_size` views.

    The last call is padded with zeros. A fixed batch shape makes a view's logits independent of which
    other views share its batch (kernels pick their blocking, hence their rounding, by shape; some CPUs
    still round a row by its position: docs/extract.md), and it keeps one compiled graph.
    """
    count = len(views)
    padded_count = -(-count // batch_size) * batch_size
    if padded_count != count:
        views = np.concatenate([views, np.zeros((padded_count - count, *views.shape[1:]), views.dtype)], axis=0)
    return np.asarray(teacher.predict(views, batch_size=batch_size), np.float32)[:count]
