"""Single-image latency of a .tflite model through ai-edge-litert, the way a phone runs it.

One thread by default (LPIRC and the MobileNet papers time one big core), a few warm-up runs that
are not counted, then N timed `invoke` calls; min, median and p90 are reported (median is the
headline: a shared machine adds noise on top, never below). The timing code takes a clock, so its
statistics are unit-tested with a fake clock; optional CPU pinning keeps the process on one core.

    python -m distillery.latency /tmp/student_int8.tflite --runs=200 --cpu=0
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from distillery import tflite_model

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Statistics of N timed runs, in milliseconds.

    Attributes:
      min: the fastest run.
      median: the 50th percentile.
      p90: the 90th percentile (linear interpolation between order statistics, as numpy.percentile).
      mean: the mean.
      runs: N.
      samples_ms: every run, in order.
    """

    min: float
    median: float
    p90: float
    mean: float
    runs: int
    samples_ms: tuple[float, ...] = dataclasses.field(repr=False, default=())

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no timed runs")
        values = np.asarray(samples_ms, np.float64)
        return cls(min=float(values.min()), median=float(np.percentile(values, 50)),
                   p90=float(np.percentile(values, 90)), mean=float(values.mean()), runs=len(values),
                   samples_ms=tuple(float(value) for value in values))

    def as_dict(self) -> dict[str, float]:
        """The report.json form: {"min", "median", "p90"} in ms."""
        return {"min": round(self.min, 4), "median": round(self.median, 4), "p90": round(self.p90, 4)}


def measure_latency(run_once: Callable[[], None], warmup: int = 10, runs: int = 100,
                    clock: Clock = time.perf_counter) -> LatencyStats:
    """Times `run_once`: `warmup` untimed calls, then `runs` calls each timed on `clock` (seconds).

    Args:
      run_once: one inference (e.g. `interpreter.invoke`).
      warmup: calls before timing starts (caches, XNNPACK packing, CPU frequency).
      runs: timed calls.
      clock: returns seconds; time.perf_counter by default, a fake in tests.

    Returns:
      LatencyStats in milliseconds.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
    for _ in range(warmup):
        run_once()
    samples_ms = []
    for _ in range(runs):
        start = clock()
        run_once()
        samples_ms.append((clock() - start) * 1000.0)
    return LatencyStats.from_samples(samples_ms)


@contextlib.contextmanager
def pinned_to_cpu(cpu: int | None) -> Iterator[None]:
    """Runs the block with this process on CPU `cpu` (Linux sched_setaffinity); None leaves it free.

    Raises:
      ValueError: when the CPU does not exist or the platform cannot pin (names --cpu).
    """
    if cpu is None or cpu < 0:
        yield
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("--cpu: this platform cannot pin a process to a CPU (no sched_setaffinity)")
    previous = os.sched_getaffinity(0)
    if cpu not in previous:
        raise ValueError(f"--cpu={cpu}: not one of the CPUs this process may use {sorted(previous)}")
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def interpreter_latency(model_content: bytes, num_threads: int = 1, warmup: int = 10, runs: int = 100,
                        clock: Clock = time.perf_counter, name: str = "<bytes>") -> LatencyStats:
    """Latency of one `invoke` of a model on random inputs of its input types."""
    interpreter = tflite_model.make_interpreter(model_content, num_threads, name)
    for detail, array in zip(interpreter.get_input_details(), tflite_model.random_inputs(interpreter)):
        interpreter.set_tensor(detail["index"], array)
    return measure_latency(interpreter.invoke, warmup, runs, clock)


def interleaved_round_medians(contents: Mapping[str, bytes], runs: int, rounds: int, warmup: int = 10,
                              on_round: Callable[[int, dict[str, list[float]]], None] | None = None
                              ) -> dict[str, list[float]]:
    """{name: [median ms of each round]}: `rounds` rounds, each timing every model once (single thread,
    a fresh interpreter, `runs` timed runs). A shared machine's load drifts between rounds, so compare
    models within a round (paired ratios), not their overall medians. `on_round(index, medians)` is
    called after each round (progress lines)."""
    medians: dict[str, list[float]] = {name: [] for name in contents}
    for round_index in range(rounds):
        for name, content in contents.items():
            medians[name].append(interpreter_latency(content, 1, warmup, runs, name=name).median)
        if on_round is not None:
            on_round(round_index, medians)
    return medians


def model_latency(path: str, num_threads: int = 1, warmup: int = 10, runs: int = 100,
                  cpu: int | None = None) -> LatencyStats:
    """Latency of the .tflite file at `path` (checked first: a bad file raises ModelFileError naming it)."""
    content = tflite_model.read_tflite(path)
    with pinned_to_cpu(cpu):
        return interpreter_latency(content, num_threads, warmup, runs, name=path)


def main(argv: Sequence[str]) -> None:
    """Tiny command line for one model: `python -m distillery.latency MODEL [--runs=N] [--cpu=N]`."""
    options = dict(arg[2:].split("=", 1) for arg in argv[1:] if arg.startswith("--") and "=" in arg)
    paths = [arg for arg in argv[1:] if not arg.startswith("--")]
    for path in paths:
        stats = model_latency(path, int(options.get("num_threads", 1)), int(options.get("warmup", 10)),
                              int(options.get("runs", 100)), int(options["cpu"]) if "cpu" in options else None)
        print(f"{path}: min {stats.min:.3f} ms, median {stats.median:.3f} ms, p90 {stats.p90:.3f} ms "
              f"({stats.runs} runs, {options.get('num_threads', 1)} thread(s))")


if __name__ == "__main__":
    main(sys.argv)
