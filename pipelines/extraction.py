"""The soft-label extraction job: images -> views -> teacher(s) -> top-k logits, as a Beam pipeline.

The job (`distillery-extract`, entry point pipelines/extract.py) reads every image of a source, decodes
it to 8-bit RGB (grayscale, CMYK, alpha and 16-bit all converted; large JPEGs decoded at a reduced DCT
scale), cuts V views (V = 1: the centre crop; V > 1: RandomResizedCrop boxes and flips drawn from the
image id and the seed, distillery/views.py), resizes them to the teacher's input size, runs the teacher
(or an ensemble: mean of logits) on batches of views and writes one soft-label record per image
(distillery/records.py). Decoding and resizing happen one image at a time before batching, so one odd
image never fails a batch. The teacher runs on TensorFlow or, converted on each worker, on LiteRT
(--teacher_runtime; auto = LiteRT on workers without a GPU, distillery/litert_teacher.py).

Nothing is lost: every input read ends as exactly one record or one dead letter,

    records written + dead letters = inputs read

A dead letter is one JSON line {"image_id", "source", "stage", "reason"} for an input that could not
be read (stage "read"), decoded ("decode"), got non-finite logits ("teacher"), or repeats an image id
listed from another origin ("duplicate": an id is kept from its copy with the smallest origin, so
reruns choose the same copy; the others are never read). Inputs with a label (>= 0) also count
labelled_views and teacher_top1_correct (views whose teacher argmax is the label), and the summary's
teacher_top1 is their ratio: a check that teacher and preprocessing agree, and for a V = 1 run over a
test set the teacher's centre-crop top-1. It means something only where the source's labels index the
teacher's classes (the demo, tfds ImageNet); `folder:` labels are folder positions.

Pipeline (step labels as in the Beam UI):

    CreateShards (work units made by the launcher: tfds, idx, capped tfrecord)
      or ListShards (folder, glob, tfrecord: patterns matched and grouped into work units on the workers)
    -> ReshuffleShards -> [ReadKeys -> GroupKeys -> ChooseCopies]  (only for sources whose ids can repeat)
    -> ExtractShards (read, decode, views, teacher, commit each shard)
      -> CollectManifests -> Finalize (dead-letter file, totals)

Only shard descriptions and small manifests cross a shuffle; image bytes, pixels and views never do.
Each work unit is committed on its own (pipelines/shard_output.py), so `resume` finishes only what a
killed run left undone and the summary counts all of it.

    python -m pipelines.extract --source=folder:/data/photos --teacher=builtin:mobilenet_v2_imagenet \\
      --output=/tmp/soft/photos --dead_letter=/tmp/soft/photos.dead.jsonl --views=4 --top_k=10
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from absl import logging
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.utils import shared

from distillery import litert_teacher, records, saved_model_check, views
from distillery.cli import option
from pipelines import extract_shard, gcs, listing, shard_output, teacher_inference, url_fetch
from pipelines.extract_shard import COUNTERS
from pipelines.teacher_inference import METRICS_NAMESPACE, TeacherLoader, load_shared_teacher

_DEFAULT_MIN_SCALE = views.DEFAULT_MIN_SCALE  # (the config's `views` field hides the module in its class body)


# Sources whose inputs are not image files (image/path can only hold a reference into a dataset).
SOURCES_WITHOUT_FILES = ("tfds", "tfrecord", "idx")
# --max_image_pixels' default: Pillow's own decompression-bomb limit, rounded.
DEFAULT_MAX_IMAGE_PIXELS = 90_000_000


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything the job needs besides the Beam options; each field is a `distillery-extract` flag."""

    source: str = option(help="Image source spec: tfds:NAME[:SPLIT], folder:DIR, glob:PATTERN, "
                              "openimages_csv:CSV[:IMAGE_DIR], tfrecord:GLOB, idx:DIR[:train|test].")
    teachers: tuple[str, ...] = option(flag="teacher", help="Teacher spec (.keras file, SavedModel directory, "
                                       "builtin:mobilenet_v2_imagenet); repeat for an ensemble (mean of logits).")
    output: str = option(help="Record prefix: writes PREFIX-KEY.tfrecord per work unit, PREFIX.shards/ (their "
                              "manifests) and PREFIX.summary.json (the exact files and counts).")
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
    teacher_runtime: str = option("auto", choices=litert_teacher.RUNTIMES, help=litert_teacher.RUNTIME_HELP)
    teacher_threads: int = option(0, lower_bound=0, help="LiteRT threads per worker process; 0 = the worker's "
                                  "CPUs (affinity and cgroup quota) divided among the worker processes that share "
                                  "them: --direct_num_workers under the local multi_processing runner, one per "
                                  "vCPU on Dataflow, --sdk_worker_parallelism on a portable runner.")
    log_every: int = option(100, lower_bound=0, help="Progress line every N images per worker.")
    examples_per_shard: int | None = option(None, lower_bound=1, help="Inputs per work unit (default: the "
                                            "source's, 256); lower it to spread a few hundred images over several "
                                            "local worker processes.")
    overwrite: bool = option(False, help="Replace what an earlier run left under --output (PREFIX-*, PREFIX.shards/, "
                                         "the summary) and the dead-letter file.")
    resume: bool = option(False, help="Finish an earlier run into the same --output: its committed work units "
                                      "are kept and skipped, the rest is done; the settings must be the same.")
    trust_saved_model: bool = option(False, help=saved_model_check.TRUST_HELP)
    allow_private_urls: bool = option(False, help="Let the URLs of an openimages_csv: list reach loopback, private, "
                                                  "link-local and other non-public addresses (a test server, a mirror "
                                                  "inside the network); cloud metadata addresses stay refused.")
    fetch_timeout: float = option(url_fetch.FetchSettings.timeout_seconds, help="Seconds one image URL may take in "
                                  "all, redirects and retries included; a slower server is cut off (a dead letter).")
    max_image_bytes: int = option(url_fetch.FetchSettings.max_bytes, lower_bound=1, help="Largest image a URL may "
                                  "send, in bytes; reading stops past it and the image is a dead letter.")
    max_image_pixels: int = option(DEFAULT_MAX_IMAGE_PIXELS, lower_bound=1, help="Largest image decoded, in pixels "
                                   "(from its header, before decoding; a JPEG's size at its reduced decoding scale): "
                                   "a larger one is a dead letter. Also sets Pillow's own decompression-bomb check.")

    def fetch_settings(self) -> url_fetch.FetchSettings:
        """The limits of the source's URL fetches (they travel with the source to the workers)."""
        return url_fetch.FetchSettings(allow_private_urls=self.allow_private_urls, timeout_seconds=self.fetch_timeout,
                                       max_bytes=self.max_image_bytes)

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
            (self.teacher_runtime in litert_teacher.RUNTIMES,
             f"--teacher_runtime must be one of {litert_teacher.RUNTIMES}, got {self.teacher_runtime!r}"),
            (not (self.overwrite and self.resume), "--overwrite and --resume exclude each other"),
            (self.fetch_timeout > 0, f"--fetch_timeout must be > 0 seconds, got {self.fetch_timeout}"),
            (self.max_image_bytes >= 1, f"--max_image_bytes must be >= 1, got {self.max_image_bytes}"),
            (self.max_image_pixels >= 1, f"--max_image_pixels must be >= 1, got {self.max_image_pixels}"),
            (self.examples_per_shard is None or self.examples_per_shard >= 1,
             f"--examples_per_shard must be >= 1, got {self.examples_per_shard}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# The settings a resumed run must share with the run it finishes (they change the records' bytes).
RESUME_SETTINGS = ("source", "teachers", "views", "top_k", "max_examples", "seed", "min_scale", "logit_dtype",
                   "store_image_max_side", "batch_size", "examples_per_shard", "teacher_runtime")


def teacher_batch_size(config: ExtractConfig) -> int:
    """Views in every teacher call: --batch_size, or --views when larger (an image's views share a call)."""
    return max(config.batch_size, config.views)


def make_pipeline(beam_args: Sequence[str] = (), save_main_session: bool = False) -> beam.Pipeline:
    """A pipeline over `beam_args` (passed through untouched); no --runner = the in-process FnApiRunner.

    DirectRunner first tries to download the Prism binary (docs/decisions/004-fnapirunner-locally.md);
    FnApiRunner runs in this process (and, with --direct_num_workers=N --direct_running_mode=multi_processing,
    in N worker processes). --runner=DataflowRunner / PortableRunner / DirectRunner are honoured as given.
    """
    options = PipelineOptions(list(beam_args))
    if save_main_session:
        options.view_as(SetupOptions).save_main_session = True
    if options.view_as(StandardOptions).runner is None:
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def worker_processes_per_machine(beam_args: Sequence[str] = ()) -> int:
    """How many worker processes of this job share one machine's CPUs (0 = one per CPU), from the Beam
    options: the local multi_processing runner starts --direct_num_workers (0 = one per CPU); Dataflow's
    Python workers run one SDK process per vCPU unless --experiments=no_use_multiple_sdk_containers; a
    portable runner (Flink) starts --sdk_worker_parallelism per worker (0 = its own choice, taken as one
    per CPU); everything else runs in one process."""
    options = PipelineOptions(list(beam_args))
    all_options = options.get_all_options(drop_default=False)
    # Beam accepts "dataflow", "DataflowRunner" and class paths alike (create_runner lower-cases the name).
    runner = str(all_options.get("runner") or "").rsplit(".", 1)[-1].lower().removesuffix("runner")
    experiments = {name for value in all_options.get("experiments") or [] for name in str(value).split(",")}
    if runner == "dataflow":
        return 1 if "no_use_multiple_sdk_containers" in experiments else 0
    if runner in ("portable", "flink", "spark"):
        return max(0, int(all_options.get("sdk_worker_parallelism") or 0))
    if all_options.get("direct_running_mode") == "multi_processing":
        return max(0, int(all_options.get("direct_num_workers") or 0))
    return 1


def keyed_shards(source: Any) -> list[tuple[str, Any]]:
    """(key, shard) of every work unit; keys name the output files and must be stable across runs."""
    shards = list(source.shards())
    width = max(6, len(str(len(shards))))
    keyer = getattr(source, "shard_key", None)
    return [(shard_output.shard_key(keyer(index, shard)) if keyer else f"{index:0{width}d}", shard)
            for index, shard in enumerate(shards)]


def build(pipeline: beam.Pipeline, config: ExtractConfig, source: Any, teacher_loader: Callable[[], Any],
          teacher_handle: shared.Shared, teacher_names: Sequence[str], input_size: tuple[int, int]) -> Any:
    """Adds the extraction steps to `pipeline` (see the module docstring); returns the totals PCollection."""
    listed = source.listing() if hasattr(source, "listing") else None
    if listed is not None:  # listed on the workers: the graph holds patterns, not files
        shards = pipeline | "ListShards" >> listing.ListedShards(listed)
    else:
        shards = pipeline | "CreateShards" >> beam.Create(keyed_shards(source), reshuffle=False)
    shards = shards | "ReshuffleShards" >> beam.Reshuffle()
    if getattr(source, "unique_ids", False):
        duplicates = beam.pvalue.AsDict(pipeline | "NoDuplicates" >> beam.Create([]))
    else:
        duplicates = beam.pvalue.AsDict(
            shards
            | "ReadKeys" >> beam.FlatMap(lambda keyed: extract_shard.read_keys(source, keyed[1]))
            | "GroupKeys" >> beam.GroupByKey()
            | "ChooseCopies" >> beam.FlatMap(extract_shard.chosen_copies))
    settings = extract_shard.ShardSettings(
        output=config.output, num_views=config.views, seed=config.seed, min_scale=config.min_scale,
        store_image_max_side=config.store_image_max_side, batch_size=teacher_batch_size(config),
        top_k=config.top_k, logit_dtype=config.logit_dtype, log_every=config.log_every, resume=config.resume,
        max_image_pixels=config.max_image_pixels)
    manifests = shards | "ExtractShards" >> beam.ParDo(
        extract_shard.ExtractShardFn(source, teacher_loader, teacher_handle, settings, teacher_names, input_size),
        duplicates=duplicates)
    output, dead_letter = config.output, config.dead_letter
    return (manifests
            | "CollectManifests" >> beam.combiners.ToList()
            | "Finalize" >> beam.Map(lambda manifests: shard_output.write_json(
                f"{shard_output.manifests_dir(output)}/_run.json",
                shard_output.finalize(output, dead_letter, manifests))))


def check_file_writable(path: str) -> None:
    """Creates and removes a file next to `path` (its folder is made where it is local), so that a file the
    job writes only at its end fails before the run instead."""
    probe = f"{path}.write-probe-{uuid.uuid4().hex}"
    with FileSystems.create(probe) as file:
        file.write(b"")
    FileSystems.delete([probe])


def prepare_output(config: ExtractConfig) -> None:
    """Refuses an --output that holds an earlier run's files unless --overwrite (they go) or --resume (they
    stay, and the settings must match); checks that the prefix and the --dead_letter file can be written.

    Raises:
      ValueError: naming --output and the file found, or the settings that differ from the run resumed.
    """
    existing = shard_output.existing_outputs(config.output)
    if existing and config.overwrite:
        removed = shard_output.remove_outputs(config.output, config.dead_letter)
        logging.info("extract: --overwrite removed %d file(s) of an earlier run under %s", removed, config.output)
    elif existing and config.resume:
        stale = shard_output.remove_temporaries(config.output)
        if stale:
            logging.info("extract: --resume removed %d temporary file(s) of interrupted work units", stale)
    elif existing:
        raise ValueError(f"--output={config.output}: an earlier run's output is there ({existing[0]}"
                         f"{f' and {len(existing) - 1} more' if len(existing) > 1 else ''}); pass --overwrite to "
                         "replace it or --resume to finish it")
    try:
        shard_output.check_writable(config.output)
    except Exception as error:  # pylint: disable=broad-except  # OSError locally, Beam's IOError on gs://
        raise ValueError(f"--output={config.output}: cannot write there: {type(error).__name__}: {error}") from None
    try:
        check_file_writable(config.dead_letter)
    except Exception as error:  # pylint: disable=broad-except  # OSError locally, Beam's IOError on gs://
        raise ValueError(f"--dead_letter={config.dead_letter}: cannot write there: {type(error).__name__}: "
                         f"{error}") from None
    settings_path = f"{shard_output.manifests_dir(config.output)}/_settings.json"
    settings = json.loads(json.dumps({name: getattr(config, name) for name in RESUME_SETTINGS}))
    if config.resume and FileSystems.exists(settings_path):
        earlier = shard_output.read_json(settings_path)
        differ = {name: (earlier.get(name), settings[name]) for name in RESUME_SETTINGS
                  if earlier.get(name) != settings[name]}
        if differ:
            raise ValueError(f"--resume into --output={config.output}: settings differ from the run it would "
                             "finish (earlier, now): " + ", ".join(f"--{name}: {old!r}, {new!r}"
                                                                   for name, (old, new) in differ.items()))
    shard_output.write_json(settings_path, settings)


def query_metrics(result: Any) -> dict | None:
    """The job's metrics in our namespace ({"counters": [...], "distributions": [...], ...}), queried once
    per run; None (with a warning) where the runner reports none."""
    try:
        return result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception as error:  # pylint: disable=broad-except  # some runners do not report metrics
        logging.warning("extract: the runner reports no metrics (%s)", error)
        return None


def counters_of(queried: dict) -> dict[str, int]:
    """The live counters of `query_metrics`'s answer (committed, else attempted)."""
    counts = {name: 0 for name in COUNTERS}
    for metric in queried["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + int(value or 0)
    return counts


def working_seconds_of(queried: dict) -> float | None:
    """Seconds from the first worker's teacher being ready to the last work unit's commit (the
    extract_shard.TIMINGS distributions of `query_metrics`'s answer), or None where the runner reports no
    distributions or no unit ran (a resume with nothing left)."""
    bounds: dict[str, list[int]] = {}
    for metric in queried.get("distributions", []):
        value = metric.committed if metric.committed is not None else metric.attempted
        if value is not None and value.count:
            bounds.setdefault(metric.key.metric.name, []).extend([value.min, value.max])
    if "teacher_ready_unix_ms" not in bounds or "unit_done_unix_ms" not in bounds:
        return None
    return max(0.0, (max(bounds["unit_done_unix_ms"]) - min(bounds["teacher_ready_unix_ms"])) / 1000)


def summary_path(output: str) -> str:
    """Where the run summary goes: PREFIX.summary.json (outside the PREFIX-* record glob)."""
    return shard_output.summary_path(output)


@dataclasses.dataclass
class ExtractResult:
    """What `run` returns: the Beam result, the counters over every committed work unit, the summary."""

    pipeline_result: Any
    counters: dict[str, int] | None
    summary: dict


def open_inputs(config: ExtractConfig, source: Any = None, teacher_loader: Callable[[], Any] | None = None,
                beam_args: Sequence[str] = ()) -> tuple[Any, Callable[[], Any], shared.Shared, Any, Any]:
    """Opens the source and loads the teacher in the launcher: bad specs fail now, naming the flag's value,
    and the in-process runner reuses this very teacher through the Shared handle.

    Returns:
      (source, teacher loader, Shared handle, holder to keep referenced, teacher).
    """
    for path in (config.output, config.dead_letter, config.source.split(":", 1)[-1]):
        if gcs.is_gcs_path(path):
            gcs.use_emulator_credentials()
    teacher_loader = teacher_loader or TeacherLoader(tuple(config.teachers), config.trust_saved_model,
                                                     config.teacher_runtime, teacher_batch_size(config),
                                                     config.teacher_threads, worker_processes_per_machine(beam_args))
    if source is None:
        from pipelines import sources  # pylint: disable=import-outside-toplevel

        shard_size = {"examples_per_shard": config.examples_per_shard} if config.examples_per_shard else {}
        source = sources.open_source(config.source, max_examples=config.max_examples,
                                     fetch_settings=config.fetch_settings(), **shard_size)
    handle = shared.Shared()
    holder, teacher = load_shared_teacher(teacher_loader, handle)
    return source, teacher_loader, handle, holder, teacher


def dry_run(config: ExtractConfig, beam_args: Sequence[str] = (), source: Any = None,
            teacher_loader: Callable[[], Any] | None = None) -> dict:
    """Validates the settings, the source and the teacher and builds the pipeline without running it.

    Returns:
      {"pipeline_bytes": size of the serialized pipeline proto, "source", "teachers", "input_size",
       "output", "existing_outputs": files an earlier run left there (a real run would refuse them without
       --overwrite or --resume)}.
    """
    config.validate()
    source, teacher_loader, handle, _holder, teacher = open_inputs(config, source, teacher_loader, beam_args)
    pipeline = make_pipeline(beam_args)
    build(pipeline, config, source, teacher_loader, handle, tuple(teacher.names), tuple(teacher.input_size))
    proto = pipeline.to_runner_api()
    return {"pipeline_bytes": len(proto.SerializeToString()), "source": config.source,
            "teachers": list(teacher.names), "input_size": list(teacher.input_size), "output": config.output,
            "existing_outputs": len(shard_output.existing_outputs(config.output))}


def run(config: ExtractConfig, beam_args: Sequence[str] = (), save_main_session: bool = False,
        test_pipeline: beam.Pipeline | None = None, source: Any = None,
        teacher_loader: Callable[[], Any] | None = None) -> ExtractResult:
    """Runs the extraction job and waits for it; writes PREFIX.summary.json.

    Args:
      config: the job's settings (flags).
      beam_args: Beam pipeline options, passed through untouched.
      save_main_session: Beam's option. Off by default, unlike Beam's examples: every DoFn lives in an
        installed module, so workers need nothing from __main__ (and an absl __main__ need not pickle).
      test_pipeline: a TestPipeline to build into instead of a new pipeline.
      source: an ImageSource (default: pipelines.sources.open_source(config.source, config.max_examples)).
      teacher_loader: picklable callable returning the Teacher (default: load config.teachers).

    Returns:
      ExtractResult with the Beam result, the counters (over every committed work unit, resumed ones
      included) and the summary dict.

    Raises:
      ValueError / FileNotFoundError: a bad flag, output, source or teacher spec, before the pipeline starts.
    """
    config.validate()
    source, teacher_loader, handle, holder, teacher = open_inputs(config, source, teacher_loader, beam_args)
    prepare_output(config)
    names, input_size = tuple(teacher.names), tuple(teacher.input_size)
    logging.info("extract: %s -> %s: teacher %s at %dx%d, %d classes, %d view(s)%s", config.source, config.output,
                 "+".join(names), input_size[0], input_size[1], teacher.num_classes, config.views,
                 ", resuming" if config.resume else "")
    pipeline = test_pipeline if test_pipeline is not None else make_pipeline(beam_args, save_main_session)
    build(pipeline, config, source, teacher_loader, handle, names, input_size)
    start = time.monotonic()
    teacher_inference.reset_progress()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - start
    del holder  # the teacher may go once the run is over
    totals = shard_output.read_json(f"{shard_output.manifests_dir(config.output)}/_run.json")
    counters = {name: int(totals["counters"].get(name, 0)) for name in COUNTERS}
    summary = {
        "source": config.source, "teachers": list(names), "output": config.output + "-*",
        "dead_letter": config.dead_letter, "views": config.views, "top_k": config.top_k,
        "logit_dtype": config.logit_dtype, "seed": config.seed, "input_size": list(input_size),
        "num_classes": int(teacher.num_classes), "seconds": round(seconds, 3), "counters": counters,
        "shards": totals["shards"], "records": sum(shard["records"] for shard in totals["shards"]),
        "resumed_shards": totals["resumed_shards"],
        # Record files of an earlier run's work units that this run does not have (removed; see shard_output).
        "stale_files_removed": totals.get("stale_files_removed", []),
        # Resolved on the workers: "litert", "tf", or "litert+tf" when workers (or a resumed run) differed.
        "teacher_runtime": "+".join(totals.get("teacher_runtimes") or [teacher_inference.runtime_of(teacher)]),
    }
    queried = query_metrics(result)
    done_now = counters_of(queried)["read"] if queried else counters["read"]
    summary["images_per_second"] = round(done_now / max(seconds, 1e-9), 2)
    # Without the workers' start and the teacher's load/conversion: the rate a long job runs at.
    working = working_seconds_of(queried) if queried else None
    if working is not None and working > 0:
        summary["working_seconds"] = round(working, 3)
        summary["images_per_second_working"] = round(done_now / working, 2)
    summary["balanced"] = counters["written"] + counters["dead_letters"] == counters["read"]
    if counters["labelled_views"]:
        summary["teacher_top1"] = round(counters["teacher_top1_correct"] / counters["labelled_views"], 6)
        logging.info("extract: teacher top-1 %.4f on %d labelled views (its argmax against the source's "
                     "labels: meaningful where those are the teacher's classes)", summary["teacher_top1"],
                     counters["labelled_views"])
    logging.info("extract: read %d, written %d, dead letters %d (duplicates %d) in %.1f s: %.1f images/s%s",
                 counters["read"], counters["written"], counters["dead_letters"], counters["duplicates"],
                 seconds, summary["images_per_second"],
                 f" ({totals['resumed_shards']} work unit(s) kept from the earlier run)" if config.resume else "")
    if summary["stale_files_removed"]:
        logging.warning("extract: removed %d record file(s) of earlier work units this run does not have (its "
                        "source no longer yields them, or an older version named them otherwise): %s",
                        len(summary["stale_files_removed"]), ", ".join(summary["stale_files_removed"][:3]))
    shard_output.write_json(summary_path(config.output), summary)
    return ExtractResult(result, counters, summary)
