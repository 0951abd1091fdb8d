"""The `distillery-benchmark` job: check every model, time it, profile it, score it, write the report.

The settings are `BenchmarkConfig` (each field is a flag of the command, distillery/cli.py); `run` is the
whole job, callable from Python:

    python -c "from benchmark import job; job.run(job.BenchmarkConfig(report_dir='/tmp/r'), ['m.tflite'])"
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from benchmark import accuracy, accuracy_pipeline, report
from distillery import atomic_files, latency, op_profile, records, tflite_model
from distillery.cli import option


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """How to measure the models."""

    report_dir: str = option(help="Where report.json, report.md and the PNGs go.")
    eval_pattern: str | None = option(None, flag="eval", help="Glob of soft-label records to evaluate on (the "
                                                              "centre crop of each).")
    eval_limit: int | None = option(None, lower_bound=1, help="Evaluate at most this many records.")
    eval_runner: str = option("local", choices=("local", "beam"), help="local: in this process; beam: the Beam "
                                                                      "job (options after --).")
    num_threads: int = option(1, lower_bound=1, help="Interpreter threads (1 = a phone's single big core).")
    warmup: int = option(10, lower_bound=0, help="Untimed runs before timing.")
    runs: int = option(100, lower_bound=1, help="Timed runs per model per round.")
    rounds: int = option(1, lower_bound=1, help="Interleaved latency rounds: each round times every model once "
                                                "(--runs runs); the statistics pool all rounds, so drift of a "
                                                "shared machine's load hits every model alike.")
    profile: bool = option(False, help="Also time every op as a single-op model.")
    profile_runs: int = option(50, lower_bound=1, help="Timed runs per single-op model.")
    cpu: int | None = option(None, lower_bound=0, help="Pin the process to this CPU while timing (Linux).")


def check_inputs(config: BenchmarkConfig, paths: Sequence[str]) -> dict[str, tflite_model.Classifier]:
    """Reads and checks every model (and its fit to the records) before any timing starts.

    Raises:
      tflite_model.ModelFileError, records.RecordError, FileNotFoundError: naming the file at fault.
    """
    classifiers = {path: tflite_model.Classifier.from_file(path, config.num_threads) for path in paths}
    if config.eval_pattern:
        spec = records.read_spec(config.eval_pattern)
        for classifier in classifiers.values():
            accuracy.check_compatible(classifier, spec, config.eval_pattern)
    return classifiers


def run(config: BenchmarkConfig, paths: Sequence[str], beam_args: Sequence[str] = ()) -> dict[str, str]:
    """Benchmarks the .tflite models at `paths`; returns {what: path} of the report files written.

    Raises:
      atomic_files.OutputFolderError: --report_dir cannot be written (checked first, before any timing).
      tflite_model.ModelFileError, records.RecordError, FileNotFoundError: see check_inputs.
    """
    atomic_files.check_writable(config.report_dir, "--report_dir")
    classifiers = check_inputs(config, paths)
    entries, profiles, timings = [], {}, {}
    contents = {path: tflite_model.read_tflite(path) for path in classifiers}
    samples: dict[str, list[float]] = {path: [] for path in classifiers}
    counts_by_path = {path: None for path in classifiers}
    # Everything timed runs pinned: latency, the per-op profile and the evaluation, whose summed invoke
    # times are the runtime of the LPIRC score.
    with latency.pinned_to_cpu(config.cpu):
        for round_index in range(config.rounds):
            for path, content in contents.items():
                stats = latency.interpreter_latency(content, config.num_threads, config.warmup, config.runs, name=path)
                samples[path].extend(stats.samples_ms)
            if config.rounds > 1:
                logging.info("latency round %d/%d done", round_index + 1, config.rounds)
        for path, content in contents.items():
            stats = latency.LatencyStats.from_samples(samples[path])
            print(f"{path}: latency min {stats.min:.3f} / median {stats.median:.3f} / p90 {stats.p90:.3f} ms "
                  f"({stats.runs} runs in {config.rounds} round(s), {config.num_threads} thread(s))")
            if config.profile:
                profile = op_profile.profile_ops(content, config.num_threads, runs=config.profile_runs, name=path)
                profiles[path] = profile
                print(f"{path}: {len(profile.rows)} ops, sum {profile.sum_ms:.3f} ms vs whole model "
                      f"{profile.whole_model_ms:.3f} ms (ratio {profile.sum_ratio:.3f})")
            timings[path] = (len(content), stats)
        if config.eval_pattern and config.eval_runner == "beam":
            for path in classifiers:
                counts_by_path[path] = accuracy_pipeline.run(
                    path, config.eval_pattern, list(beam_args), num_threads=config.num_threads,
                    output=f"{config.report_dir}/eval_counts_{report.safe_name(path)}.json")
        elif config.eval_pattern:
            # One pass over the records for every model: each image is read and cropped once per input size.
            counts_by_path = accuracy.evaluate_records_many(
                classifiers, records.read_records(config.eval_pattern, config.eval_limit))
    for path, counts in counts_by_path.items():
        if counts is not None:
            print(f"{path}: {counts.images} images, top-1 {counts.top1}, top-5 {counts.top5}, "
                  f"teacher agreement {counts.teacher_agreement}")
        size, stats = timings[path]
        entries.append(report.model_entry(path, size, stats, config.num_threads, profiles.get(path), counts))
    return report.write_report(entries, config.report_dir, profiles)
