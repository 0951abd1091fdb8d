"""`distillery-benchmark`: latency, per-op profile, accuracy and LPIRC score of .tflite models.

Every model is checked first (a corrupt or non-TFLite file, or a model whose classes or input do
not fit the records, stops the run with an error naming the file). Then single-image latency through
ai-edge-litert (one thread by default, warm-up runs, `--rounds` interleaved rounds of `--runs` timed
runs over all models, pooled per model: min/median/p90), optionally the per-op profile (`--profile`),
and with `--eval` top-1/top-5 (labelled records), teacher agreement and the LPIRC score, all models in
one pass over the records. `--eval_runner=beam` evaluates with the Beam job of
`benchmark.accuracy_pipeline` (Beam options after `--`). Writes DIR/report.json, report.md, PNGs.
The job is benchmark/job.py; this is its command line.

    distillery-benchmark /tmp/student_float32.tflite /tmp/student_int8.tflite \
        --eval='runs/demo/soft_labels/eval-*' --profile --report_dir=/tmp/report
    python -m benchmark.main MODEL.tflite --runs=200 --cpu=0 --report_dir=/tmp/report
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from benchmark import job
from distillery import atomic_files, cli, records, tflite_model
from pipelines import beam_options

cli.define_flags(job.BenchmarkConfig)
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "", "Beam options for --eval_runner=beam, as one string (or after `--`).")


def main(argv: list[str]) -> None:
    paths, beam_args = beam_options.split_argv(argv[1:], _BEAM_PIPELINE_OPTIONS.value)
    if not paths:
        raise app.UsageError("give at least one MODEL.tflite")
    try:
        written = job.run(cli.from_flags(job.BenchmarkConfig), paths, beam_args)
    except (tflite_model.ModelFileError, records.RecordError, FileNotFoundError, atomic_files.OutputFolderError) as error:
        print(f"distillery-benchmark: error: {error}", file=sys.stderr)
        sys.exit(2)
    for what, path in written.items():
        print(f"wrote {what}: {path}")


def run_main() -> None:
    logging.getLogger().setLevel(logging.INFO)
    cli.run(main)


if __name__ == "__main__":
    run_main()
