"""Command line of the Beam accuracy job (`benchmark.accuracy_pipeline`); Beam options after `--`.

    python -m benchmark.accuracy_pipeline_main --model=/tmp/student_int8.tflite \
        --eval='runs/demo/soft_labels/eval-*' --output=/tmp/eval_counts.json
    python -m benchmark.accuracy_pipeline_main --model=gs://b/m.tflite --eval='gs://b/eval-*' \
        --output=gs://b/eval_counts.json -- --runner=DataflowRunner --project=P --region=R
"""

from __future__ import annotations

import json

from absl import app, flags

from benchmark import accuracy_pipeline
from distillery import cli
from pipelines import beam_options

_MODEL = flags.DEFINE_string("model", None, "The .tflite model (local or gs://).")
_EVAL = flags.DEFINE_string("eval", None, "Glob(s) of soft-label records, comma-separated.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the summed counts go (JSON; local or gs://).")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "Interpreter threads per worker.")
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string("beam_pipeline_options", "", "Beam options as one string (or after `--`).")

flags.mark_flags_as_required(["model", "eval"])


def main(argv: list[str]) -> None:
    positional, beam_args = beam_options.split_argv(argv[1:], _BEAM_PIPELINE_OPTIONS.value)
    if positional:
        raise app.UsageError(f"unexpected arguments {positional}: Beam options go after `--`")
    counts = accuracy_pipeline.run(_MODEL.value, _EVAL.value, beam_args, _NUM_THREADS.value, _OUTPUT.value)
    print(json.dumps({"model": _MODEL.value, "images": counts.images, "top1": counts.top1, "top5": counts.top5,
                      "teacher_agreement": counts.teacher_agreement, "runtime_ms": round(counts.runtime_ms, 3)}))


def run_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    run_main()
