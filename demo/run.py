"""`make demo`: the whole chain on Fashion-MNIST, through the same commands a user runs.

It reproduces at small scale the experiments of the LPIRC 2018 team this project learns from:
1. train a teacher (a bigger CNN) on a labelled part of the training set, on random views drawn like the
   stored ones (so its soft labels are right on the views the students replay);
2. extract soft labels with the Beam job (`distillery-extract`), V views, over the labelled part, over the
   rest of the training set with its labels removed (the Open Images role) and over the test set;
3. train students (`distillery-train`): hard labels only; labelled part with distillation; labelled +
   unlabeled with distillation; the two shorter runs are quantized to int8 (`distillery-quantize`) as
   soon as each ends;
4. factorize the best student layerwise and fine-tune it (`distillery-factorize`), while the other
   student is quantized to int8 and the best one to float32;
5. quantize the factorized student to int8;
6. benchmark all of them on the test set (`distillery-benchmark`): top-1, single-thread latency, per-op
   profile, LPIRC score; then check the goals and append them to the report.

    make demo                                                   # = python -m demo.run --output_dir=runs/demo
    .venv/bin/python -m demo.run --runlocal --output_dir=/tmp/demo-tiny

The commands and their settings come from configs/chain.py (the stages of configs/demo.py's recipe), the
list the Kubeflow pipeline runs too (pipelines_kfp/); this module only schedules them and logs each `$` line.

Outputs: OUTPUT_DIR/report.md, report.json, PNG plots; every stage's inputs and outputs under OUTPUT_DIR.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from absl import app, flags, logging

from benchmark.job import BenchmarkConfig
from compress.factorize_job import JobConfig
from compress.finetune import FinetuneConfig
from compress.quantize_job import QuantizeConfig
from configs import chain
from configs import demo as demo_config
from demo import data as demo_data
from demo import goals
from distillery import cli
from pipelines.extraction import ExtractConfig
from trainer.train_config import TrainConfig

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/demo", "Where every stage writes; the report lands here.")
_RUNLOCAL = flags.DEFINE_bool("runlocal", False, "The tiny recipe the tests run (configs/demo.py) instead of the full one.")
_IDX_DIR = flags.DEFINE_string("idx_dir", demo_data.FASHION_MNIST_DIR, "Fashion-MNIST idx files.")

# Console script -> module, for running from a checkout whose scripts are not on PATH.
COMMANDS = {
    "distillery-extract": "pipelines.extract",
    "distillery-train": "trainer.train",
    "distillery-factorize": "compress.factorize_main",
    "distillery-quantize": "compress.quantize_main",
    "distillery-benchmark": "benchmark.main",
}


def command_line(name: str, args: Sequence[str]) -> list[str]:
    """The console script next to this Python (the venv's), else `python -m module`."""
    script = shutil.which(name, path=os.path.dirname(sys.executable))
    return [script, *args] if script else [sys.executable, "-m", COMMANDS[name], *args]


class Command(NamedTuple):
    """One user command of a stage: console script, its arguments, a label for the timings, environment
    variables set for it (on top of this process's), and commands that need its output (`then`: run in
    its slot as soon as it succeeds, instead of waiting for the whole stage)."""

    name: str
    args: Sequence[str]
    label: str
    env: Mapping[str, str] | None = None
    then: Sequence[Command] = ()


# TensorFlow's own thread-pool sizes, for commands that share the machine's cores: the student steps are
# many small ops, and one process per core with one thread each trains ~25% more images per second in
# total than two processes with a 2-thread pool each on 2 cores (measured: ~1,950 vs ~1,560 images/s).
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


class Stages:
    """Runs numbered stages of user commands and logs what they cost.

    Commands of one stage are independent (three extractions; three students, two of them followed by
    their conversion; the factorize job and conversions), so they run `parallel` at a time: each is a
    separate process whose TensorFlow start-up is mostly one core, and this machine has two.
    """

    def __init__(self, total: int, parallel: int = 2):
        self.total, self.number, self.start = total, 0, time.perf_counter()
        self.parallel = parallel
        self.seconds: dict[str, float] = {}
        # One stage at a time: run() resets these. The lock makes "not stopping? then start and register
        # the process" one step, so a stop either sees a process to terminate or prevents its start.
        self._lock = threading.Lock()
        self._stopping = False
        self._running: dict[str, subprocess.Popen] = {}
        self._failure: BaseException | None = None

    def banner(self, title: str) -> None:
        self.number += 1
        logging.info("=== stage %d/%d: %s (%.0f s so far) ===", self.number, self.total, title,
                     time.perf_counter() - self.start)

    def _stop(self, failure: BaseException | None = None) -> None:
        """Terminates the running commands and starts no more; keeps the first failure (the commands
        terminated here fail too, after it)."""
        with self._lock:
            if failure is not None and not self._stopping:
                self._failure = failure
            self._stopping = True
            for process in self._running.values():
                if process.poll() is None:
                    process.terminate()

    def _run_one(self, command: Command) -> None:
        try:
            argv = command_line(command.name, command.args)
            env = dict(command.env or {})
            with self._lock:
                if self._stopping:  # another command of the stage failed: start nothing new
                    return
                logging.info("$ %s", " ".join([*(f"{name}={value}" for name, value in env.items()), *argv]))
                began = time.perf_counter()
                process = subprocess.Popen(argv, env={**os.environ, **env} if env else None)
                self._running[command.label] = process
            returncode = process.wait()
            self.seconds[command.label] = round(time.perf_counter() - began, 1)
            if returncode != 0:
                raise RuntimeError(f"stage {command.label!r} failed: {command.name} exited with {returncode}")
        except BaseException as error:
            # Stop here, in the failing worker, not only in run(): the pool hands this worker its next
            # queued command before run() wakes up.
            self._stop(error)
            raise
        for follower in command.then:
            self._run_one(follower)

    def run(self, commands: Sequence[Command], parallel: int | None = None) -> None:
        """Runs the commands, `parallel` (default: the stages') at a time; on the first failure terminates
        the running ones, starts nothing more and raises it (without waiting for the others to end)."""
        self._stopping, self._running, self._failure = False, {}, None
        with concurrent.futures.ThreadPoolExecutor(parallel or self.parallel) as pool:
            futures = [pool.submit(self._run_one, command) for command in commands]
            try:
                done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
                failed = [future for future in futures if future in done and future.exception() is not None]
                if failed:
                    raise self._failure if self._failure is not None else failed[0].exception()
            except BaseException:  # a failed command, or Ctrl-C here
                self._stop()
                for future in futures:
                    future.cancel()
                raise


# The demo's log is a worked example: these flags are always written, in this order, even at their
# defaults (cli.to_flags `first`); the values are the recipe's (configs/demo.py) via configs/chain.py.
SHOWN_FLAGS = {
    ExtractConfig: ("source", "teachers", "output", "dead_letter", "views", "top_k", "min_scale", "seed",
                    "store_image_max_side", "overwrite"),
    TrainConfig: ("train_pattern", "eval_pattern", "student", "width", "image_size", "model_dir", "alpha",
                  "temperature", "steps", "batch_size", "learning_rate", "seed", "log_every"),
    JobConfig: ("model_path", "train_pattern", "eval_pattern", "output_path", "energy", "rank_ratio",
                "target_latency_ms", "latency_reduction", "ranks"),
    FinetuneConfig: ("mode", "steps", "final_steps", "batch_size", "learning_rate", "alpha", "temperature"),
    QuantizeConfig: ("model", "output", "mode"),
    BenchmarkConfig: ("eval_pattern", "num_threads", "runs", "rounds", "profile", "report_dir"),
}


def command(stage: chain.Stage, env: Mapping[str, str] | None = None, then: Sequence[Command] = ()) -> Command:
    """A stage of the chain as the user command the demo runs (and logs)."""
    return Command(stage.command, chain.arguments(stage, SHOWN_FLAGS), stage.label, env, then)


def run_demo(output_dir: str, cfg: demo_config.DemoConfig, idx_dir: str = demo_data.FASHION_MNIST_DIR) -> dict:
    """Runs every stage and returns the goals summary (also written into the report)."""
    os.makedirs(output_dir, exist_ok=True)
    paths = chain.ChainPaths(output_dir)
    stages = Stages(total=7)

    stages.banner("split Fashion-MNIST into labelled / unlabeled / test TFRecords")
    splits = demo_data.write_splits(paths.path("data"), cfg.labelled, cfg.unlabeled, cfg.test, idx_dir)
    logging.info("images: %s", splits.counts)

    stages.banner("train the teacher CNN on the labelled part")
    from demo import teacher as demo_teacher  # pylint: disable=import-outside-toplevel  (TF start-up only here)
    demo_teacher.train_and_save(cfg, splits.labelled, paths.path("teacher.keras"))
    recipe = demo_config.recipe(cfg, data_dir=paths.path("data"), teacher=paths.path("teacher.keras"))

    stages.banner("extract soft labels with the Beam job")
    stages.run([command(stage) for stage in chain.extract_stages(recipe, paths)])
    # The test extraction ran the teacher on every test image's centre crop (the view the students are
    # scored on) and counted its top-1 against the labels: no second pass over the test set.
    test_summary = paths.records_prefix(recipe.eval_part) + ".summary.json"
    with open(test_summary, encoding="utf-8") as handle:
        teacher_top1 = json.load(handle).get("teacher_top1")
    if teacher_top1 is None:
        raise RuntimeError(f"{test_summary} has no teacher_top1: the runner reported no counters, or no "
                           "labelled test view reached the teacher (see the test dead letters)")
    logging.info("teacher top-1 on the test set (centre crop, as the students are evaluated): %.4f", teacher_top1)

    stages.banner("train students: hard labels, distilled, distilled + unlabeled (and quantize the shorter runs)")
    # All three run at once, one TensorFlow thread each (ONE_THREAD), so the core the two shorter runs
    # leave is not idle while the longer one finishes: their int8 conversions follow each of them there
    # (`then`). Measured on the full demo (3000 steps for the longer one then): 547-553 s for the three;
    # the longer one on one core and the two shorter ones after each other on the other: 574 s.
    trainings = chain.train_stages(recipe, paths)  # the longest first: it starts first
    longest = max(stage.config.steps for stage in trainings)
    converted = {name for name, stage in zip(chain.training_order(recipe), trainings) if stage.config.steps < longest}
    stages.run([command(stage, ONE_THREAD, then=(command(chain.quantize_at(recipe, paths, name), ONE_THREAD),)
                        if name in converted else ())
                for name, stage in zip(chain.training_order(recipe), trainings)], parallel=len(trainings))
    summaries = {name: json.load(open(os.path.join(paths.model_dir(name), "summary.json")))
                 for name in chain.training_order(recipe)}
    best = chain.best_student(recipe, {name: goals.top1_of_summary(summary) for name, summary in summaries.items()})

    # The factorize job is the long one; the remaining conversions run beside it, one at a time. One
    # TensorFlow thread for the job too: measured alone on this machine, its fine-tuning trains
    # 1,580-1,660 images/s with one thread and 1,410-1,500 with two.
    stages.banner(f"factorize the best student ({best}) layerwise, with distillation fine-tuning "
                  "(and quantize the other students meanwhile)")
    stages.run([command(chain.factorize_at(recipe, paths, best), ONE_THREAD),
                *(command(chain.quantize_at(recipe, paths, name), ONE_THREAD)
                  for name in chain.training_order(recipe) if name not in converted),
                command(chain.quantize_at(recipe, paths, best, chain.REFERENCE_MODE), ONE_THREAD)])

    stages.banner("quantize the factorized student to int8")
    stages.run([command(chain.quantize_at(recipe, paths, chain.FACTORIZED), ONE_THREAD)])

    stages.banner("benchmark every model on the test set: top-1, latency, per-op profile, LPIRC score")
    stages.run([command(chain.benchmark_at(recipe, paths, best))])

    summary = goals.check(paths.path("report.json"), best=best, teacher_top1=teacher_top1, images=splits.counts,
                          stage_seconds=stages.seconds)
    goals.append_to_report(output_dir, summary)
    logging.info("demo finished in %.0f s: %s", time.perf_counter() - stages.start, paths.path("report.md"))
    return summary


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run_demo(_OUTPUT_DIR.value, demo_config.get_config(runlocal=_RUNLOCAL.value), _IDX_DIR.value)


if __name__ == "__main__":
    cli.run(main)
