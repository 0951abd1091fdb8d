"""`distillery-benchmark`: latency, per-op profile, accuracy and LPIRC score of .tflite models.

Every model is checked first (a corrupt or non-TFLite file, or a model whose classes or input do
not fit the records, stops the run with an error naming the file). Then single-image latency through
ai-edge-litert (one thread by default, warm-up runs, `--rounds` interleaved rounds of `--runs` timed
runs over all models, pooled per model: min/median/p90), optionally the per-op profile (`--profile`),
and with `--eval` top-1/top-5 (labelled records), teacher agreement and the LPIRC score, all models in
one pass over the records. `--eval_runner=beam` evaluates with the Beam job of
`benchmark.accuracy_pipeline` (Beam options after `--`). Writes DIR/report.json, report.md, PNGs.

    distillery-benchmark /tmp/student_float32.tflite /tmp/student_int8.tflite \
        --eval='runs/demo/soft_labels/eval-*' --profile --report_dir=/tmp/report
    python -m benchmark.main MODEL.tflite --runs=200 --cpu=0 --report_dir=/tmp/report
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from benchmark import accuracy, accuracy_pipeline, report
from distillery import latency, op_profile, records, tflite_model
from pipelines import beam_options

_EVAL = flags.DEFINE_string("eval", None, "Glob of soft-label records to evaluate on (the centre crop of each).")
_EVAL_LIMIT = flags.DEFINE_integer("eval_limit", None, "Evaluate at most this many records.")
_EVAL_RUNNER = flags.DEFINE_enum("eval_runner", "local", ["local", "beam"],
                                 "local: in this process; beam: the Beam job (options after --).")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "Interpreter threads (1 = a phone's single big core).")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed runs before timing.")
_RUNS = flags.DEFINE_integer("runs", 100, "Timed runs per model per round.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "Interleaved latency rounds: each round times every model once (--runs runs); the statistics "
    "pool all rounds, so drift of a shared machine's load hits every model alike.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also time every op as a single-op model.")
_PROFILE_RUNS = flags.DEFINE_integer("profile_runs", 50, "Timed runs per single-op model.")
_CPU = flags.DEFINE_integer("cpu", None, "Pin the process to this CPU while timing (Linux).")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "Where report.json, report.md and the PNGs go.")
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "", "Beam options for --eval_runner=beam, as one string (or after `--`).")

flags.mark_flag_as_required("report_dir")


def _check_inputs(paths: list[str]) -> dict[str, tflite_model.Classifier]:
    """Reads and checks every model (and its fit to the records) before any timing starts."""
    classifiers = {path: tflite_model.Classifier.from_file(path, _NUM_THREADS.value) for path in paths}
    if _EVAL.value:
        spec = records.read_spec(_EVAL.value)
        for classifier in classifiers.values():
            accuracy.check_compatible(classifier, spec, _EVAL.value)
    return classifiers


def main(argv: list[str]) -> None:
    paths, beam_args = beam_options.split_argv(argv[1:], _BEAM_PIPELINE_OPTIONS.value)
    if not paths:
        raise app.UsageError("give at least one MODEL.tflite")
    if _ROUNDS.value < 1 or _RUNS.value < 1:
        raise app.UsageError("--rounds and --runs must be >= 1")
    try:
        classifiers = _check_inputs(paths)
    except (tflite_model.ModelFileError, records.RecordError, FileNotFoundError) as error:
        print(f"distillery-benchmark: error: {error}", file=sys.stderr)
        sys.exit(2)
    entries, profiles, timings = [], {}, {}
    if _EVAL_RUNNER.value == "beam" and "://" not in _REPORT_DIR.value:
        os.makedirs(_REPORT_DIR.value, exist_ok=True)
    contents = {path: tflite_model.read_tflite(path) for path in classifiers}
    samples: dict[str, list[float]] = {path: [] for path in classifiers}
    counts_by_path = {path: None for path in classifiers}
    # Everything timed runs pinned: latency, the per-op profile and the evaluation, whose summed invoke
    # times are the runtime of the LPIRC score.
    with latency.pinned_to_cpu(_CPU.value):
        for round_index in range(_ROUNDS.value):
            for path, content in contents.items():
                stats = latency.interpreter_latency(content, _NUM_THREADS.value, _WARMUP.value, _RUNS.value, name=path)
                samples[path].extend(stats.samples_ms)
            if _ROUNDS.value > 1:
                logging.info("latency round %d/%d done", round_index + 1, _ROUNDS.value)
        for path, content in contents.items():
            stats = latency.LatencyStats.from_samples(samples[path])
            print(f"{path}: latency min {stats.min:.3f} / median {stats.median:.3f} / p90 {stats.p90:.3f} ms "
                  f"({stats.runs} runs in {_ROUNDS.value} round(s), {_NUM_THREADS.value} thread(s))")
            if _PROFILE.value:
                profile = op_profile.profile_ops(content, _NUM_THREADS.value, runs=_PROFILE_RUNS.value, name=path)
                profiles[path] = profile
                print(f"{path}: {len(profile.rows)} ops, sum {profile.sum_ms:.3f} ms vs whole model "
                      f"{profile.whole_model_ms:.3f} ms (ratio {profile.sum_ratio:.3f})")
            timings[path] = (len(content), stats)
        if _EVAL.value and _EVAL_RUNNER.value == "beam":
            for path in classifiers:
                counts_by_path[path] = accuracy_pipeline.run(
                    path, _EVAL.value, beam_args, num_threads=_NUM_THREADS.value,
                    output=f"{_REPORT_DIR.value}/eval_counts_{report.safe_name(path)}.json")
        elif _EVAL.value:
            # One pass over the records for every model: each image is read and cropped once per input size.
            counts_by_path = accuracy.evaluate_records_many(
                classifiers, records.read_records(_EVAL.value, _EVAL_LIMIT.value))
    for path, counts in counts_by_path.items():
        if counts is not None:
            print(f"{path}: {counts.images} images, top-1 {counts.top1}, top-5 {counts.top5}, "
                  f"teacher agreement {counts.teacher_agreement}")
        size, stats = timings[path]
        entries.append(report.model_entry(path, size, stats, _NUM_THREADS.value, profiles.get(path), counts))
    written = report.write_report(entries, _REPORT_DIR.value, profiles)
    for what, path in written.items():
        print(f"wrote {what}: {path}")


def run_main() -> None:
    logging.getLogger().setLevel(logging.INFO)
    app.run(main)


if __name__ == "__main__":
    run_main()
