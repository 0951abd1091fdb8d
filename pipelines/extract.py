"""distillery-extract: teacher soft labels for every image of a source, as a Beam job.

Reads a source, decodes each image, cuts V views, runs the teacher(s) on batches of views and writes
top-k logits per view as soft-label TFRecords (PREFIX-SSSSS-of-NNNNN) plus one dead-letter JSON line
per input that could not be used; records written + dead letters = inputs read. The work is in
pipelines/extraction.py; Beam options go after `--` (or in one --beam_pipeline_options flag) and pass
through untouched; with no --runner the job runs in this process on Beam's FnApiRunner.

    distillery-extract --source=folder:/data/photos --teacher=builtin:mobilenet_v2_imagenet \\
      --output=/tmp/soft/photos --dead_letter=/tmp/soft/photos.dead.jsonl --views=4 --top_k=10 \\
      -- --direct_num_workers=2 --direct_running_mode=multi_processing
    python -m pipelines.extract --source=tfds:imagenet2012:validation --teacher=builtin:mobilenet_v2_imagenet \\
      --output=gs://bucket/soft/val --dead_letter=gs://bucket/soft/val.dead.jsonl \\
      -- --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp --setup_file=./setup.py
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags

from distillery import records, views
from pipelines import beam_options, extraction

_SOURCE = flags.DEFINE_string("source", None, "Image source spec: tfds:NAME[:SPLIT], folder:DIR, glob:PATTERN, "
                              "openimages_csv:CSV[:IMAGE_DIR], tfrecord:GLOB, idx:DIR[:train|test].")
_TEACHER = flags.DEFINE_multi_string("teacher", None, "Teacher spec (.keras file, SavedModel directory, "
                                     "builtin:mobilenet_v2_imagenet); repeat for an ensemble (mean of logits).")
_OUTPUT = flags.DEFINE_string("output", None, "Record prefix: writes PREFIX-SSSSS-of-NNNNN and PREFIX.summary.json.")
_DEAD_LETTER = flags.DEFINE_string("dead_letter", None, "Dead-letter file: one JSON line per input not written.")
_VIEWS = flags.DEFINE_integer("views", 1, "Views per image: 1 = centre crop, >1 = random resized crops + flips.",
                              lower_bound=1)
_TOP_K = flags.DEFINE_integer("top_k", 10, "Logits kept per view; 0 = all classes.", lower_bound=0)
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Read at most this many inputs (quick runs).",
                                     lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random views (with the image id).")
_MIN_SCALE = flags.DEFINE_float("min_scale", views.DEFAULT_MIN_SCALE, "Smallest area fraction of a random view.")
_LOGIT_DTYPE = flags.DEFINE_enum("logit_dtype", "float32", list(records.LOGIT_DTYPES), "Storage dtype of logits.")
_STORE_IMAGE_MAX_SIDE = flags.DEFINE_integer(
    "store_image_max_side", 0, "Store the image re-encoded (JPEG) with its longer side at most this; 0 = store "
    "only its path.", lower_bound=0)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Views per teacher call.", lower_bound=1)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Output shards; 0 = the runner decides.", lower_bound=0)
_LOG_EVERY = flags.DEFINE_integer("log_every", 100, "Progress line every N images per worker.", lower_bound=0)
_EXAMPLES_PER_SHARD = flags.DEFINE_integer(
    "examples_per_shard", None, "Inputs per work unit (default: the source's, 256); lower it to spread a few "
    "hundred images over several local worker processes.", lower_bound=1)
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "", "Beam options as one string, e.g. '--runner=DataflowRunner --project=P'; "
    "added before the options given after `--`.")


def config_from_flags() -> extraction.ExtractConfig:
    """The job's settings from the parsed flags."""
    return extraction.ExtractConfig(
        source=_SOURCE.value or "", teachers=tuple(_TEACHER.value or ()), output=_OUTPUT.value or "",
        dead_letter=_DEAD_LETTER.value or "", views=_VIEWS.value, top_k=_TOP_K.value,
        max_examples=_MAX_EXAMPLES.value, seed=_SEED.value, min_scale=_MIN_SCALE.value,
        logit_dtype=_LOGIT_DTYPE.value, store_image_max_side=_STORE_IMAGE_MAX_SIDE.value,
        batch_size=_BATCH_SIZE.value, num_shards=_NUM_SHARDS.value, log_every=_LOG_EVERY.value,
        examples_per_shard=_EXAMPLES_PER_SHARD.value)


def beam_args_from(argv: Sequence[str]) -> list[str]:
    """--beam_pipeline_options split like a shell would, then everything after `--`, untouched."""
    positional, beam_args = beam_options.split_argv(argv[1:], _BEAM_PIPELINE_OPTIONS.value)
    if positional:
        raise app.UsageError(f"unexpected arguments {positional}: Beam options go after `--`")
    return beam_args


def main(argv: Sequence[str]) -> None:
    config = config_from_flags()
    try:
        config.validate()
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    try:
        # The DoFns live in the installed pipelines.extraction module; the absl __main__ need not be pickled.
        result = extraction.run(config, beam_args_from(argv), save_main_session=False)
    except (FileNotFoundError, ValueError) as error:  # bad source/teacher specs, reported before the run
        print(f"distillery-extract: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {extraction.summary_path(config.output)}: "
          + ", ".join(f"{name} {value}" for name, value in sorted((result.counters or {}).items())))


def run_main() -> None:
    """Console script `distillery-extract`."""
    app.run(main)


if __name__ == "__main__":
    run_main()
