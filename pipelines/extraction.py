"""The soft-label extraction job: images -> views -> teacher(s) -> top-k logits, as a Beam pipeline.

The job (`distillery-extract`, entry point pipelines/extract.py) reads every image of a source, decodes
it to 8-bit RGB (grayscale, CMYK, alpha and 16-bit all converted; large JPEGs decoded at a reduced DCT
scale), cuts V views (V = 1: the centre crop; V > 1: RandomResizedCrop boxes and flips drawn from the
image id and the seed, distillery/views.py), resizes them to the teacher's input size, runs the teacher
(or an ensemble: mean of logits) on batches of views and writes one soft-label record per image
(distillery/records.py) to sharded TFRecords. Decoding and resizing happen one image at a time before
batching, so one odd image never fails a batch.

Nothing is lost: every input read ends as exactly one record or one dead letter,

    records written + dead letters = inputs read

A dead letter is one JSON line {"image_id", "source", "stage", "reason"} for an input that could not
be read (stage "read"), decoded ("decode"), got non-finite logits ("teacher"), or repeats an image id
whose record was already written from another input ("duplicate": an id is written once, from its
successful copy with the smallest origin, so reruns choose the same copy). Beam counters in the
namespace `distillery.extract` count read, read_failed, decode_failed, teacher_failed, duplicates,
written, dead_letters, batches and views; after the run they are written to PREFIX.summary.json.
Inputs with a label (>= 0) also count labelled_views and teacher_top1_correct (views whose teacher argmax
is the label), and the summary's teacher_top1 is their ratio: the teacher's accuracy on the very views
it labelled, a check that teacher and preprocessing agree (a wrong mean/std or channel order shows as a
collapse) and, for a V = 1 run over a test set, the teacher's centre-crop top-1 without a second pass.
It means something only when the source's labels index the teacher's classes (the demo, tfds ImageNet);
`folder:` labels are folder positions. Counted before deduplication, like views.

Pipeline (step labels as in the Beam UI):

    CreateShards -> ReshuffleShards -> ReadImages -> DecodeAndCrop -> BatchViews -> RunTeacher
      -> ToRecords -> DedupeById -> KeepOnePerId -> WriteRecords (PREFIX-SSSSS-of-NNNNN)
                                                  \\-> WriteDeadLetters (one JSON line per failure)

Deduplication runs on the small outcomes (records or dead letters), not on the image bytes, so the
images are never shuffled: reading, decoding and inference fuse into one stage.

    python -m pipelines.extract --source=folder:/data/photos --teacher=builtin:mobilenet_v2_imagenet \\
      --output=/tmp/soft/photos --dead_letter=/tmp/soft/photos.dead.jsonl --views=4 --top_k=10
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from absl import logging
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.utils import shared

from distillery import images, records, views
from distillery.cli import option
from pipelines import gcs, teacher_inference
from pipelines.teacher_inference import METRICS_NAMESPACE, RunTeacherFn, TeacherLoader, ViewedImage, load_shared_teacher

DEAD = "dead"
COUNTERS = ("read", "read_failed", "decode_failed", "teacher_failed", "duplicates", "written", "dead_letters",
            "batches", "views", "labelled_views", "teacher_top1_correct")
_DEFAULT_MIN_SCALE = views.DEFAULT_MIN_SCALE  # (the config's `views` field hides the module in its class body)
# Record outcomes sort before dead letters when one image id has several inputs.
_RECORD_RANK, _DEAD_RANK = 0, 1


# Sources whose inputs are not image files (image/path can only hold a reference into a dataset).
SOURCES_WITHOUT_FILES = ("tfds", "tfrecord", "idx")


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything the job needs besides the Beam options; each field is a `distillery-extract` flag."""

    source: str = option(help="Image source spec: tfds:NAME[:SPLIT], folder:DIR, glob:PATTERN, "
                              "openimages_csv:CSV[:IMAGE_DIR], tfrecord:GLOB, idx:DIR[:train|test].")
    teachers: tuple[str, ...] = option(flag="teacher", help="Teacher spec (.keras file, SavedModel directory, "
                                       "builtin:mobilenet_v2_imagenet); repeat for an ensemble (mean of logits).")
    output: str = option(help="Record prefix: writes PREFIX-SSSSS-of-NNNNN and PREFIX.summary.json.")
    dead_letter: str = option(help="Dead-letter file (JSON lines, written whole): one line per input not written.")
    views: int = option(1, lower_bound=1, help="Views per image: 1 = centre crop, >1 = random resized crops + flips.")
    top_k: int = option(10, lower_bound=0, help="Logits kept per view; 0 (or >= the classes) = all classes.")
    max_examples: int | None = option(None, lower_bound=1, help="Read at most this many inputs (quick runs).")
    seed: int = option(0, help="Seed of the random views (with the image id).")
    min_scale: float = option(_DEFAULT_MIN_SCALE, help="Smallest area fraction of a random view.")
    logit_dtype: str = option("float32", choices=records.LOGIT_DTYPES, help="Storage dtype of logits.")
    store_image_max_side: int = option(0, lower_bound=0, help="Store the image re-encoded (JPEG) with its longer "
                                       "side at most this; 0 = store only its path (image/path always holds it).")
    batch_size: int = option(32, lower_bound=1, help="Views per teacher call.")
    num_shards: int = option(0, lower_bound=0, help="Output shards; 0 = the runner decides.")
    log_every: int = option(100, lower_bound=0, help="Progress line every N images per worker.")
    examples_per_shard: int | None = option(None, lower_bound=1, help="Inputs per work unit (default: the "
                                            "source's, 256); lower it to spread a few hundred images over several "
                                            "local worker processes.")

    def validate(self) -> None:
        """Raises ValueError naming the flag of the first bad value (before any heavy work)."""
        checks = [
            (bool(self.source), "--source is required"),
            (bool(self.teachers), "--teacher is required (repeat it for an ensemble)"),
            (bool(self.output), "--output is required"),
            (bool(self.dead_letter), "--dead_letter is required"),
            (self.views >= 1, f"--views must be >= 1, got {self.views}"),
            (self.top_k >= 0, f"--top_k must be >= 0 (0 = full logits), got {self.top_k}"),
            (self.max_examples is None or self.max_examples >= 1, f"--max_examples must be >= 1, got {self.max_examples}"),
            (0.0 < self.min_scale <= 1.0, f"--min_scale must be in (0, 1], got {self.min_scale}"),
            (self.logit_dtype in records.LOGIT_DTYPES,
             f"--logit_dtype must be one of {records.LOGIT_DTYPES}, got {self.logit_dtype!r}"),
            (self.store_image_max_side >= 0, f"--store_image_max_side must be >= 0, got {self.store_image_max_side}"),
            # The trainer replays views from the image: a source without image files (tfds, tfrecord,
            # idx) leaves only a reference like tfds:imagenet2012:train[5] in image/path, which no one
            # can open, so its images must be stored in the records.
            (self.store_image_max_side > 0 or self.source.split(":", 1)[0] not in SOURCES_WITHOUT_FILES,
             f"--store_image_max_side must be > 0 (e.g. 320) for --source={self.source}: it has no image files "
             "the trainer could read the views from"),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
            (self.num_shards >= 0, f"--num_shards must be >= 0, got {self.num_shards}"),
            (self.examples_per_shard is None or self.examples_per_shard >= 1,
             f"--examples_per_shard must be >= 1, got {self.examples_per_shard}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def decode_min_side(input_side: int, num_views: int, min_scale: float) -> int:
    """The shorter image side a JPEG may be reduced to (DCT scaling) without upsampling any view.

    A centre crop covers 87.5% of each side; a random view at least sqrt(min_scale * 3/4) of the shorter
    side (area fraction min_scale, aspect ratio up to 4/3). Decoding at a smaller scale than this would
    make the teacher see an upsampled, blurrier view than the full-resolution image gives.
    """
    fraction = views.CENTRAL_FRACTION if num_views == 1 else math.sqrt(min_scale * views.ASPECT_RATIO_RANGE[0])
    return int(math.ceil(input_side / fraction))


def dead_letter_json(image_id: str, origin: str, stage: str, reason: str) -> str:
    """One dead-letter line: {"image_id", "source", "stage", "reason"}."""
    return json.dumps({"image_id": image_id, "source": origin, "stage": stage, "reason": reason}, sort_keys=True)


def _is_failure(item: Any) -> bool:
    # pipelines.sources yields SourceExample(image_id, encoded, label, origin) or ReadFailure(image_id, origin, reason).
    return hasattr(item, "reason") and not hasattr(item, "encoded")


class ReadShardFn(beam.DoFn):
    """Reads one shard of the source: SourceExamples out, read failures to the `dead` output.

    The ImageSource itself is pickled to the workers (sources pickle without their file listing).
    """

    def __init__(self, source: Any):
        self._source = source
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read")
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "read_failed")

    def process(self, shard: Any) -> Iterator[Any]:
        already_read = 0
        try:
            for item in self._source.read_shard(shard):
                already_read += 1
                self._read.inc()
                if _is_failure(item):
                    self._failed.inc()
                    yield beam.pvalue.TaggedOutput(DEAD, (str(item.image_id), str(item.origin), "read", str(item.reason)))
                else:
                    yield item
        except Exception as error:  # pylint: disable=broad-except  # an unreadable shard must not stop the job
            reason = f"shard failed after {already_read} input(s): {type(error).__name__}: {error}"
            # Every input the shard still held is accounted for, one dead letter each where the shard
            # knows them; a shard that does not (a TFRecord file) gets one dead letter for its rest.
            unread = self._source.unread_inputs(shard, already_read)
            for image_id, origin in unread if unread is not None else [(f"{shard}[{already_read}:]",) * 2]:
                self._read.inc()
                self._failed.inc()
                yield beam.pvalue.TaggedOutput(DEAD, (image_id, origin, "read", reason))


class DecodeAndCropFn(beam.DoFn):
    """Decodes one image, samples its views and crops/resizes them to the teacher's input size.

    Any failure to decode (empty, truncated, random bytes, text named .jpg, unsupported format, ...)
    goes to the `dead` output with the reason; the image never reaches a batch.
    """

    def __init__(self, input_size: tuple[int, int], num_views: int, seed: int, min_scale: float,
                 store_image_max_side: int = 0):
        self._input_size = tuple(input_size)
        self._num_views = num_views
        self._seed = seed
        self._min_scale = min_scale
        self._store_image_max_side = store_image_max_side
        self._min_side = max(decode_min_side(max(self._input_size), num_views, min_scale), store_image_max_side)
        self._failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "decode_failed")
        self._crop = None

    def setup(self):
        self._crop = views.compiled_crop_views(tuple(self._input_size))

    def process(self, example: Any) -> Iterator[Any]:
        try:
            image = images.decode_rgb(example.encoded, min_side=self._min_side)
            viewed = make_views(example, image, self._crop, self._num_views, self._seed, self._min_scale,
                                self._store_image_max_side)
        except Exception as error:  # pylint: disable=broad-except  # inputs are untrusted: never fail the job
            self._failed.inc()
            reason = str(error) if isinstance(error, images.ImageDecodeError) else f"{type(error).__name__}: {error}"
            yield beam.pvalue.TaggedOutput(DEAD, (str(example.image_id), str(example.origin), "decode", reason))
            return
        yield viewed


def make_views(example: Any, image: np.ndarray, crop: Callable, num_views: int, seed: int, min_scale: float,
               store_image_max_side: int = 0) -> ViewedImage:
    """The ViewedImage of a decoded [H, W, 3] uint8 image: sampled boxes and flips, and their pixels.

    `crop` is `views.compiled_crop_views(size)`: all views of the image in one call."""
    height, width = image.shape[:2]
    crops, flips = views.sample_views(str(example.image_id), seed, num_views, height, width, min_scale)
    pixels = crop(image, crops.astype(np.float32), flips.astype(bool)).numpy()
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


def keyed_record(image_logits: tuple[ViewedImage, np.ndarray], teacher_names: Sequence[str], top_k: int,
                 logit_dtype: str) -> tuple[str, tuple]:
    """(image_id, outcome) of a written record from (image, [V, C] logits), for the per-id deduplication."""
    viewed, logits = image_logits
    return viewed.image_id, (_RECORD_RANK, viewed.origin, "", to_record(viewed, logits, teacher_names, top_k,
                                                                       logit_dtype))


class KeepOnePerIdFn(beam.DoFn):
    """One outcome per image id: the record from the smallest origin; every other input a dead letter."""

    def __init__(self):
        self._written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "written")
        self._dead = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self._duplicates = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "duplicates")

    def process(self, keyed: tuple[str, Iterable[tuple]]) -> Iterator[Any]:
        image_id, outcomes = keyed
        outcomes = sorted(outcomes, key=lambda outcome: (outcome[0], outcome[1], outcome[2]))
        first_rank, first_origin = outcomes[0][0], outcomes[0][1]
        if first_rank == _RECORD_RANK:
            self._written.inc()
            yield outcomes[0][3]
            rest = outcomes[1:]
        else:
            rest = outcomes
        for rank, origin, stage, payload in rest:
            self._dead.inc()
            if first_rank == _RECORD_RANK:
                self._duplicates.inc()
                reason = f"duplicate image id: its record was written from {first_origin}"
                if rank == _DEAD_RANK:
                    reason += f" (this copy also failed at {stage}: {payload})"
                stage = "duplicate"
            else:
                reason = payload
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter_json(image_id, origin, stage, reason))


def make_pipeline(beam_args: Sequence[str] = (), save_main_session: bool = False) -> beam.Pipeline:
    """A pipeline over `beam_args` (passed through untouched); no --runner = the in-process FnApiRunner.

    docs/decisions/004-fnapirunner-locally.md: DirectRunner first tries to download the Prism binary; FnApiRunner runs in
    this process (and, with --direct_num_workers=N --direct_running_mode=multi_processing, in N worker
    processes). --runner=DataflowRunner / PortableRunner / DirectRunner are honoured as given.
    """
    options = PipelineOptions(list(beam_args))
    if save_main_session:
        options.view_as(SetupOptions).save_main_session = True
    if options.view_as(StandardOptions).runner is None:
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def build(pipeline: beam.Pipeline, config: ExtractConfig, shards: Sequence[Any], source: Any,
          teacher_loader: Callable[[], Any], teacher_handle: shared.Shared, teacher_names: Sequence[str],
          input_size: tuple[int, int]) -> None:
    """Adds the extraction steps to `pipeline` (see the module docstring for the shape)."""
    shard_list = list(shards)
    read = (pipeline
            | "CreateShards" >> beam.Create(shard_list, reshuffle=False)
            | "ReshuffleShards" >> beam.Reshuffle()
            | "ReadImages" >> beam.ParDo(ReadShardFn(source)).with_outputs(DEAD, main="examples"))
    decoded = read.examples | "DecodeAndCrop" >> beam.ParDo(
        DecodeAndCropFn(input_size, config.views, config.seed, config.min_scale,
                        config.store_image_max_side)).with_outputs(DEAD, main="viewed")
    batch_size = max(config.batch_size, config.views)
    inferred = (decoded.viewed
                | "BatchViews" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size,
                                                     element_size_fn=lambda viewed: len(viewed.pixels))
                | "RunTeacher" >> beam.ParDo(RunTeacherFn(teacher_loader, teacher_handle, batch_size,
                                                          log_every=config.log_every)
                                             ).with_outputs(RunTeacherFn.DEAD, main="logits"))
    written = inferred.logits | "ToRecords" >> beam.Map(
        keyed_record, teacher_names=tuple(teacher_names), top_k=config.top_k, logit_dtype=config.logit_dtype)
    failures = ((read[DEAD], decoded[DEAD], inferred[RunTeacherFn.DEAD])
                | "AllFailures" >> beam.Flatten()
                | "KeyFailures" >> beam.MapTuple(lambda image_id, origin, stage, reason:
                                                 (image_id, (_DEAD_RANK, origin, stage, reason))))
    kept = ((written, failures)
            | "AllOutcomes" >> beam.Flatten()
            | "DedupeById" >> beam.GroupByKey()
            | "KeepOnePerId" >> beam.ParDo(KeepOnePerIdFn()).with_outputs(DEAD, main="records"))
    _ = kept.records | "WriteRecords" >> beam.io.WriteToTFRecord(config.output, num_shards=config.num_shards)
    _ = kept[DEAD] | "WriteDeadLetters" >> beam.io.WriteToText(config.dead_letter, shard_name_template="",
                                                                num_shards=1)


def read_counters(result: Any) -> dict[str, int] | None:
    """The job's counters from the result's metrics (committed, else attempted); None if unsupported."""
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception as error:  # pylint: disable=broad-except  # some runners do not report metrics
        logging.warning("extract: the runner reports no metrics (%s); the summary has no counts", error)
        return None
    counts = {name: 0 for name in COUNTERS}
    for metric in queried["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + int(value or 0)
    return counts


def summary_path(output: str) -> str:
    """Where the run summary goes: PREFIX.summary.json (outside the PREFIX-* record glob)."""
    return output + ".summary.json"


def write_summary(path: str, summary: dict) -> None:
    """Writes the summary JSON through Beam FileSystems (local or gs://)."""
    with FileSystems.create(path, mime_type="application/json") as file:
        file.write((json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@dataclasses.dataclass
class ExtractResult:
    """What `run` returns: the Beam result, the counters (None if the runner has none), the summary."""

    pipeline_result: Any
    counters: dict[str, int] | None
    summary: dict


def run(config: ExtractConfig, beam_args: Sequence[str] = (), save_main_session: bool = False,
        test_pipeline: beam.Pipeline | None = None, source: Any = None,
        teacher_loader: Callable[[], Any] | None = None) -> ExtractResult:
    """Runs the extraction job and waits for it; writes PREFIX.summary.json.

    Args:
      config: the job's settings (flags).
      beam_args: Beam pipeline options, passed through untouched.
      save_main_session: Beam's option. Off by default, unlike Beam's examples: every DoFn lives in this
        installed module, so workers need nothing from __main__ (and an absl __main__ need not pickle).
      test_pipeline: a TestPipeline to build into instead of a new pipeline.
      source: an ImageSource (default: pipelines.sources.open_source(config.source, config.max_examples)).
      teacher_loader: picklable callable returning the Teacher (default: load config.teachers).

    Returns:
      ExtractResult with the Beam result, the counters and the summary dict.

    Raises:
      ValueError / FileNotFoundError: a bad flag, source or teacher spec, before the pipeline starts.
    """
    config.validate()
    for path in (config.output, config.dead_letter, config.source.split(":", 1)[-1]):
        if gcs.is_gcs_path(path):
            gcs.use_emulator_credentials()
    teacher_loader = teacher_loader or TeacherLoader(tuple(config.teachers))
    # Open the source and load the teacher here first: bad specs fail now, naming the flag's value,
    # and the in-process runner reuses this very teacher through the Shared handle.
    if source is None:
        from pipelines import sources  # pylint: disable=import-outside-toplevel

        shard_size = {"examples_per_shard": config.examples_per_shard} if config.examples_per_shard else {}
        source = sources.open_source(config.source, max_examples=config.max_examples, **shard_size)
    shards = list(source.shards())
    handle = shared.Shared()
    holder, teacher = load_shared_teacher(teacher_loader, handle)
    names, input_size = tuple(teacher.names), tuple(teacher.input_size)
    logging.info("extract: %s -> %s: %d shard(s), teacher %s at %dx%d, %d classes, %d view(s)", config.source,
                 config.output, len(shards), "+".join(names), input_size[0], input_size[1], teacher.num_classes,
                 config.views)
    pipeline = test_pipeline if test_pipeline is not None else make_pipeline(beam_args, save_main_session)
    build(pipeline, config, shards, source, teacher_loader, handle, names, input_size)
    start = time.monotonic()
    teacher_inference.reset_progress()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - start
    del holder  # the teacher may go once the run is over
    counters = read_counters(result)
    summary = {
        "source": config.source, "teachers": list(names), "output": config.output + "-*",
        "dead_letter": config.dead_letter, "views": config.views, "top_k": config.top_k,
        "logit_dtype": config.logit_dtype, "seed": config.seed, "input_size": list(input_size),
        "num_classes": int(teacher.num_classes), "seconds": round(seconds, 3), "counters": counters,
    }
    if counters:
        summary["images_per_second"] = round(counters["read"] / max(seconds, 1e-9), 2)
        summary["balanced"] = counters["written"] + counters["dead_letters"] == counters["read"]
        if counters["labelled_views"]:
            summary["teacher_top1"] = round(counters["teacher_top1_correct"] / counters["labelled_views"], 6)
            logging.info("extract: teacher top-1 %.4f on %d labelled views (its argmax against the source's "
                         "labels: meaningful where those are the teacher's classes)", summary["teacher_top1"],
                         counters["labelled_views"])
        logging.info("extract: read %d, written %d, dead letters %d (duplicates %d) in %.1f s: %.1f images/s",
                     counters["read"], counters["written"], counters["dead_letters"], counters["duplicates"],
                     seconds, summary["images_per_second"])
    write_summary(summary_path(config.output), summary)
    return ExtractResult(result, counters, summary)
