"""distillery-extract: teacher soft labels for every image of a source, as a Beam job.

Reads a source, decodes each image, cuts V views, runs the teacher(s) on batches of views and writes
top-k logits per view as soft-label TFRecords (PREFIX-KEY.tfrecord, one per work unit, listed with their
counts in PREFIX.summary.json) plus one dead-letter JSON line per input that could not be used; records
written + dead letters = inputs read. An --output that holds an earlier run is refused unless
--overwrite or --resume; --dry_run builds the pipeline and prints its size without running it. The work is in
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

import json
import sys
from collections.abc import Sequence

from absl import app, flags

from distillery import cli
from pipelines import beam_options, extraction

cli.define_flags(extraction.ExtractConfig)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check the flags, the source and the teacher, build the pipeline, "
                              "print one JSON line (pipeline_bytes, source, ...) and exit without running it.")
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "", "Beam options as one string, e.g. '--runner=DataflowRunner --project=P'; "
    "added before the options given after `--`.")


def config_from_flags() -> extraction.ExtractConfig:
    """The job's settings from the parsed flags."""
    return cli.from_flags(extraction.ExtractConfig)


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
        if _DRY_RUN.value:
            print(json.dumps(extraction.dry_run(config, beam_args_from(argv)), sort_keys=True))
            return
        # The DoFns live in installed pipelines modules; the absl __main__ need not be pickled.
        result = extraction.run(config, beam_args_from(argv), save_main_session=False)
    except (FileNotFoundError, ValueError) as error:  # bad source/teacher specs, reported before the run
        print(f"distillery-extract: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {extraction.summary_path(config.output)}: "
          + ", ".join(f"{name} {value}" for name, value in sorted((result.counters or {}).items())))


def run_main() -> None:
    """Console script `distillery-extract`."""
    cli.run(main)


if __name__ == "__main__":
    run_main()
