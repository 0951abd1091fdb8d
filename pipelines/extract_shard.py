"""Extracting one work unit of a source: read -> decode -> views -> teacher -> records, committed as one.

A work unit (a shard of the source) is read whole by one DoFn call, so nothing that carries image
bytes, pixels or views crosses a shuffle: only shard descriptions go in and small manifests come out.
The teacher is called on exactly `batch_size` views each time (views of consecutive images of a unit
share a call; a unit's last call is padded), so a view's logits do not depend on its neighbours and a
rerun writes byte-identical records. Calls run in a background thread while the next batch is decoded
and cropped, and they keep running from one unit into the next: the next unit is read and decoded
while the last call of the one before runs, instead of the cores waiting for it (a unit of 125 images
took ~1/6 longer when every unit drained the teacher: docs/results.md "Extraction"). A unit's records
are streamed to a temporary file and committed with its manifest (pipelines/shard_output.py) once its
last image has its logits, while the next unit is read or at the end of the bundle; with `resume`, a
committed shard is not done again.

    python -c "from pipelines import extract_shard; help(extract_shard.ExtractShardFn)"
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from absl import logging
from apache_beam.utils import shared

from distillery import images, numpy_views, records, views
from pipelines import shard_output
from pipelines.teacher_inference import (
    METRICS_NAMESPACE,
    ViewedImage,
    load_shared_teacher,
    progress,
    run_fixed_batches,
    runtime_of,
)

# Wall-clock instants (ms since the epoch) as distributions: the earliest moment a worker's teacher was
# ready and the last unit's commit bound the job's working time, which leaves out the workers' start
# and the teacher's load and conversion (seconds per worker process, paid once per job).
TIMINGS = ("teacher_ready_unix_ms", "unit_done_unix_ms")
COUNTERS = ("read", "read_failed", "decode_failed", "teacher_failed", "duplicates", "written", "dead_letters",
            "batches", "views", "labelled_views", "teacher_top1_correct")


def dead_letter_json(image_id: str, origin: str, stage: str, reason: str) -> str:
    """One dead-letter line: {"image_id", "source", "stage", "reason"}."""
    return json.dumps({"image_id": image_id, "source": origin, "stage": stage, "reason": reason}, sort_keys=True)


def is_failure(item: Any) -> bool:
    """Whether a source item is a ReadFailure (it has a reason and no bytes)."""
    return hasattr(item, "reason") and not hasattr(item, "encoded")


def shard_fingerprint(shard: Any) -> str:
    """A digest of a shard's description: a resumed run checks that a key still means the same inputs."""
    return hashlib.sha256(repr(shard).encode("utf-8")).hexdigest()[:16]


def decode_min_side(input_side: int, num_views: int, min_scale: float) -> int:
    """The shorter image side a JPEG may be reduced to (DCT scaling) without upsampling any view.

    A centre crop covers 87.5% of each side; a random view at least sqrt(min_scale * 3/4) of the shorter
    side (area fraction min_scale, aspect ratio up to 4/3). Decoding at a smaller scale than this would
    make the teacher see an upsampled, blurrier view than the full-resolution image gives.
    """
    fraction = views.CENTRAL_FRACTION if num_views == 1 else math.sqrt(min_scale * views.ASPECT_RATIO_RANGE[0])
    return int(math.ceil(input_side / fraction))


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """What the per-shard work needs of the job's configuration."""

    output: str
    num_views: int
    seed: int
    min_scale: float
    store_image_max_side: int
    batch_size: int
    top_k: int
    logit_dtype: str
    log_every: int
    resume: bool
    max_image_pixels: int = images.MAX_DECODED_PIXELS  # larger images are dead letters, refused before decoding


def make_views(example: Any, image: np.ndarray, size: tuple[int, int], num_views: int, seed: int, min_scale: float,
               store_image_max_side: int = 0) -> ViewedImage:
    """The ViewedImage of a decoded [H, W, 3] uint8 image: sampled boxes and flips, and their pixels at
    the teacher's input `size` (`numpy_views.crop_views`: `views.crop_view`'s pixels on this core, not
    TensorFlow's thread pool, which the teacher's forward pass has)."""
    height, width = image.shape[:2]
    crops, flips = views.sample_views(str(example.image_id), seed, num_views, height, width, min_scale)
    pixels = numpy_views.crop_views(image, crops, flips, size)
    encoded = images.encode_bounded(image, store_image_max_side) if store_image_max_side > 0 else b""
    return ViewedImage(image_id=str(example.image_id), label=int(example.label), origin=str(example.origin),
                       crops=crops, flips=flips, pixels=pixels, encoded_image=encoded)


def to_record(viewed: ViewedImage, logits: np.ndarray, teacher_names: Sequence[str], top_k: int,
              logit_dtype: str) -> bytes:
    """The serialized soft-label record of one image and its [V, C] logits (top_k 0 = all classes)."""
    num_classes = logits.shape[1]
    k = num_classes if top_k <= 0 else min(top_k, num_classes)
    record = records.make_record(viewed.image_id, viewed.label, teacher_names, viewed.crops, viewed.flips, logits,
                                 k, encoded_image=viewed.encoded_image, image_path=viewed.origin,
                                 logit_dtype=logit_dtype)
    return records.encode(record)


class ViewBatcher:
    """Feeds the views of consecutive images to the teacher in calls of exactly `batch_size` views.

    `add` returns the images whose every view has its logits, in the order they were added; `flush`
    finishes the rest with one padded call. At most `batch_size` + V views are held at a time.

    With `overlap`, each call runs in a background thread while the caller decodes and crops the next
    batch (the teacher releases the GIL: TensorFlow's ops and LiteRT's invoke do): an image then comes
    back one call later, at most 2 x `batch_size` + V views are held, and the calls, their order and
    so the logits are the same. One call at a time is in flight.
    """

    def __init__(self, teacher: Any, batch_size: int, overlap: bool = False):
        self._teacher, self._batch_size = teacher, batch_size
        self._images: list[ViewedImage] = []      # waiting, in order
        self._logits: list[list[np.ndarray]] = []  # per waiting image, the logits of its views so far
        self._queue: list[tuple[list[np.ndarray], np.ndarray, Any]] = []  # (its image's logits, a view, owner)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "teacher") if overlap else None
        self._in_flight: tuple[list, concurrent.futures.Future] | None = None
        self.calls = 0
        self.views = 0
        self.calls_by_owner: collections.Counter = collections.Counter()  # calls per owner of a call's last view

    def add(self, image: ViewedImage, owner: Any = None) -> list[tuple[ViewedImage, np.ndarray]]:
        """Queues an image's views (`owner`: whom `calls_by_owner` counts the calls that end with them)."""
        slot: list[np.ndarray] = []
        self._images.append(image)
        self._logits.append(slot)
        self._queue.extend((slot, view, owner) for view in image.pixels)
        while len(self._queue) >= self._batch_size:
            self._run(self._batch_size)
        return self._pop_finished()

    def cut(self) -> list[tuple[ViewedImage, np.ndarray]]:
        """Sends the views still queued as one padded call, without waiting for it: the next image's views
        start a new call (a work unit's end)."""
        if self._queue:
            self._run(len(self._queue))
        return self._pop_finished()

    def flush(self) -> list[tuple[ViewedImage, np.ndarray]]:
        finished = self.cut()
        self._collect()
        if self._executor is not None:
            self._executor.shutdown()
        return finished + self._pop_finished()

    def close(self) -> None:
        """Gives up: waits for the call in flight without using its logits and ends the background thread."""
        if self._in_flight is not None:
            concurrent.futures.wait([self._in_flight[1]])
            self._in_flight = None
        if self._executor is not None:
            self._executor.shutdown()

    def _run(self, count: int) -> None:
        taken, self._queue = self._queue[:count], self._queue[count:]
        views = np.stack([view for _, view, _ in taken])
        self._collect()
        if self._executor is None:
            self._assign(taken, run_fixed_batches(self._teacher, views, self._batch_size))
        else:
            self._in_flight = (taken, self._executor.submit(run_fixed_batches, self._teacher, views, self._batch_size))

    def _collect(self) -> None:
        """Waits for the call in flight, if any, and hands its logits to their images."""
        if self._in_flight is not None:
            taken, future = self._in_flight
            self._in_flight = None
            self._assign(taken, future.result())

    def _assign(self, taken: list[tuple[list[np.ndarray], np.ndarray, Any]], logits: np.ndarray) -> None:
        for (slot, _, _), row in zip(taken, logits):
            slot.append(row)
        calls = -(-len(taken) // self._batch_size)
        self.calls += calls  # counted when done, so progress lines add up
        self.calls_by_owner[taken[-1][2]] += calls
        self.views += len(taken)

    def _pop_finished(self) -> list[tuple[ViewedImage, np.ndarray]]:
        finished = 0
        while finished < len(self._images) and len(self._logits[finished]) == len(self._images[finished].pixels):
            finished += 1
        done = [(dataclasses.replace(image, pixels=None), np.stack(logits))
                for image, logits in zip(self._images[:finished], self._logits[:finished])]
        if finished:
            self._images, self._logits = self._images[finished:], self._logits[finished:]
        return done


@dataclasses.dataclass(eq=False)
class _OpenUnit:
    """A work unit being extracted: its writer, counters and dead letters, and how many of its images still
    wait for their logits (`read_all`: every input has been read)."""

    key: str
    fingerprint: str
    writer: shard_output.ShardWriter
    counts: dict[str, int]
    dead: list[str] = dataclasses.field(default_factory=list)
    waiting: int = 0
    read_all: bool = False

    def dead_letter(self, image_id: str, origin: str, stage: str, reason: str, counter: str | None) -> None:
        self.dead.append(dead_letter_json(image_id, origin, stage, reason))
        if counter:
            self.counts[counter] += 1


class ExtractShardFn(beam.DoFn):
    """(key, shard) -> the committed shard's manifest: every input of the shard is a record or a dead letter.

    A unit's manifest comes out when its last image has its logits: from the `process` call of a later
    unit of the same bundle, or from `finish_bundle`. Side input `duplicates`: {image id: the origin whose
    copy is kept} for ids listed more than once; every other copy is a dead letter (stage "duplicate")
    without being read.
    """

    def __init__(self, source: Any, loader: Callable[[], Any], handle: shared.Shared, settings: ShardSettings,
                 teacher_names: Sequence[str], input_size: tuple[int, int]):
        self._source, self._loader, self._handle = source, loader, handle
        self._settings = settings
        self._teacher_names = tuple(teacher_names)
        self._input_size = tuple(input_size)
        self._min_side = max(decode_min_side(max(self._input_size), settings.num_views, settings.min_scale),
                             settings.store_image_max_side)
        self._metrics = {name: beam.metrics.Metrics.counter(METRICS_NAMESPACE, name) for name in COUNTERS}
        self._timings = {name: beam.metrics.Metrics.distribution(METRICS_NAMESPACE, name) for name in TIMINGS}
        self._holder = self._teacher = None
        self._ready_ms: int | None = None
        self._start_bundle_state()

    def _start_bundle_state(self) -> None:
        self._batcher: ViewBatcher | None = None
        self._open: collections.deque[_OpenUnit] = collections.deque()  # in the order they were read
        self._owners: collections.deque[_OpenUnit] = collections.deque()  # per image in the batcher, its unit
        self._reported = {"images": 0, "views": 0}
        self._written = 0

    def setup(self):
        self._holder, self._teacher = load_shared_teacher(self._loader, self._handle)
        images.use_pixel_limit(self._settings.max_image_pixels)  # Pillow's own check, in this worker process
        self._ready_ms = int(time.time() * 1000)  # reported with the first unit: setup has no metrics context

    def start_bundle(self):
        self._start_bundle_state()

    def process(self, keyed_shard: tuple[str, Any], duplicates: Mapping[str, str] | None = None) -> Iterator[dict]:
        key, shard = keyed_shard
        fingerprint = shard_fingerprint(shard)
        if self._settings.resume:
            manifest = shard_output.read_manifest(self._settings.output, key)
            if manifest is not None and manifest.get("shard") == fingerprint:
                yield {**manifest, "resumed": True}
                return
        if self._ready_ms is not None:
            self._timings["teacher_ready_unix_ms"].update(self._ready_ms)
            self._ready_ms = None
        unit = _OpenUnit(key, fingerprint, shard_output.ShardWriter(self._settings.output, key),
                         dict.fromkeys(COUNTERS, 0))
        self._open.append(unit)
        try:  # Exception, not BaseException: a generator closed early (GeneratorExit) is not a failure
            yield from self._extract(shard, unit, duplicates or {})
        except Exception:
            self._abort_open()
            raise

    def finish_bundle(self):
        try:
            if self._batcher is not None:
                self._finish(self._batcher.flush())
                self._report()
            manifests = list(self._commit_finished())
            if self._open:
                raise RuntimeError(f"extract: work units {[unit.key for unit in self._open]} still wait for "
                                   "logits after the bundle's last call")
        except Exception:
            self._abort_open()
            raise
        self._start_bundle_state()
        for manifest in manifests:
            yield beam.transforms.window.GlobalWindows.windowed_value(manifest)

    def _abort_open(self) -> None:
        """A failed bundle: stops the teacher's call in flight and drops the temporary files of every unit
        not yet committed (the runner retries the bundle)."""
        if self._batcher is not None:
            self._batcher.close()
        for unit in self._open:
            unit.writer.abort()
        self._start_bundle_state()

    def _commit_finished(self) -> Iterator[dict]:
        """Commits the oldest units while every image of theirs has been written; yields their manifests.
        A unit leaves the open ones only once committed, so a failed commit is aborted with the rest."""
        while self._open and self._open[0].read_all and self._open[0].waiting == 0:
            unit = self._open[0]
            counts = unit.counts
            counts["batches"] = self._batcher.calls_by_owner.pop(unit, 0)
            counts["dead_letters"] = len(unit.dead)
            manifest = unit.writer.commit({"shard": unit.fingerprint, "counters": counts, "dead_letters": unit.dead,
                                           "teacher_runtime": runtime_of(self._teacher)})
            self._open.popleft()
            for name, value in counts.items():
                self._metrics[name].inc(value)
            self._timings["unit_done_unix_ms"].update(int(time.time() * 1000))
            yield manifest

    def _finish(self, finished: list[tuple[ViewedImage, np.ndarray]]) -> None:
        """Writes the records of images that have their logits, each into its own unit."""
        settings = self._settings
        for image, logits in finished:
            unit = self._owners.popleft()
            unit.waiting -= 1
            unit.counts["views"] += len(logits)
            if not np.all(np.isfinite(logits)):
                unit.dead_letter(image.image_id, image.origin, "teacher", "teacher produced non-finite logits",
                                 "teacher_failed")
                continue
            if image.label >= 0:  # the teacher's top-1 on labelled inputs: a check of teacher and views
                unit.counts["labelled_views"] += len(logits)
                unit.counts["teacher_top1_correct"] += int(np.sum(np.argmax(logits, axis=1) == image.label))
            unit.writer.write(to_record(image, logits, self._teacher_names, settings.top_k, settings.logit_dtype))
            unit.counts["written"] += 1
            self._written += 1

    def _report(self) -> None:
        """Adds what this bundle finished since the last line to the process's progress."""
        batcher = self._batcher
        if batcher is None or batcher.views == self._reported["views"]:
            return
        message = progress.add(self._written - self._reported["images"], batcher.views - self._reported["views"],
                               self._settings.log_every)
        self._reported.update(images=self._written, views=batcher.views)
        if message:
            logging.info(message)

    def _extract(self, shard: Any, unit: _OpenUnit, duplicates: Mapping[str, str]) -> Iterator[dict]:
        """Reads a unit's inputs and hands each decoded image's views to the bundle's batcher; yields the
        manifests of earlier units as they are committed. The unit's last views go in a call of their own
        (`ViewBatcher.cut`), so every unit's views start a call: a view's place in its call, hence its
        logits to the last bit, does not depend on the units before it (a `--resume` writes the same
        bytes as a run that was not interrupted)."""
        settings = self._settings
        if self._batcher is None:
            progress.start()
            self._batcher = ViewBatcher(self._teacher, max(settings.batch_size, 1), overlap=True)
        batcher = self._batcher
        for item in self._read(shard, unit.counts, unit.dead_letter):
            winner = duplicates.get(str(item.image_id))
            if winner is not None and winner != str(item.origin):
                unit.dead_letter(str(item.image_id), str(item.origin), "duplicate",
                                 f"duplicate image id: the copy written (or dead-lettered) is {winner}", "duplicates")
                continue
            if is_failure(item):
                unit.dead_letter(str(item.image_id), str(item.origin), "read", str(item.reason), "read_failed")
                continue
            try:
                image = images.decode_rgb(item.encoded, min_side=self._min_side, max_pixels=settings.max_image_pixels)
                viewed = make_views(item, image, self._input_size, settings.num_views, settings.seed,
                                    settings.min_scale, settings.store_image_max_side)
            except Exception as error:  # pylint: disable=broad-except  # inputs are untrusted: never fail the job
                reason = str(error) if isinstance(error, images.ImageDecodeError) else f"{type(error).__name__}: {error}"
                unit.dead_letter(str(item.image_id), str(item.origin), "decode", reason, "decode_failed")
                continue
            unit.waiting += 1
            self._owners.append(unit)
            calls = batcher.calls
            self._finish(batcher.add(viewed, owner=unit))
            if batcher.calls != calls:
                self._report()
                yield from self._commit_finished()
        self._finish(batcher.cut())
        self._report()
        unit.read_all = True
        yield from self._commit_finished()

    def _read(self, shard: Any, counts: dict[str, int], dead_letter: Callable) -> Iterator[Any]:
        """The shard's items; a shard whose reading fails part-way dead-letters each input it still held."""
        already_read = 0
        try:
            for item in self._source.read_shard(shard):
                already_read += 1
                counts["read"] += 1
                yield item
        except Exception as error:  # pylint: disable=broad-except  # an unreadable shard must not stop the job
            reason = f"shard failed after {already_read} input(s): {type(error).__name__}: {error}"
            unread = self._source.unread_inputs(shard, already_read)
            for image_id, origin in unread if unread is not None else [(f"{shard}[{already_read}:]",) * 2]:
                counts["read"] += 1
                dead_letter(image_id, origin, "read", reason, "read_failed")


def read_keys(source: Any, shard: Any) -> Iterator[tuple[str, str]]:
    """(image id, origin) of every input of a shard, for the deduplication before any image is decoded.

    A source may provide `read_keys(shard)` that avoids reading image bytes (file listings); otherwise the
    shard is read and only the keys are kept. A shard that cannot be read yields what it could.
    """
    reader = getattr(source, "read_keys", None)
    try:
        if reader is not None:
            yield from reader(shard)
        else:
            for item in source.read_shard(shard):
                yield str(item.image_id), str(item.origin)
    except Exception as error:  # pylint: disable=broad-except  # the extraction pass reports the failure
        logging.warning("extract: keys of shard %r stop at %s", shard, error)


def chosen_copies(keyed: tuple[str, Sequence[str]]) -> Iterator[tuple[str, str]]:
    """(image id, the origin kept) for an id listed from more than one origin: the smallest origin."""
    image_id, origins = keyed
    distinct = sorted(set(origins))
    if len(distinct) > 1:
        yield image_id, distinct[0]
