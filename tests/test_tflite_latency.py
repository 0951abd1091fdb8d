"""distillery.latency: statistics from a fake clock (no sleeping), warm-up handling, CPU pinning."""

from __future__ import annotations

import os

import numpy as np
import pytest

from distillery import latency


class FakeClock:
    """Each run_once advances time by the next scripted duration; reading the clock costs nothing."""

    def __init__(self, durations_s):
        self.now = 100.0
        self._durations = list(durations_s)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def run_once(self) -> None:
        self.calls += 1
        self.now += self._durations.pop(0)


def test_statistics_match_a_hand_computation():
    # 2 warm-up runs (10 s, 20 s: must not count), then 10 timed runs of 1..10 ms in shuffled order.
    timed_ms = [7, 3, 10, 1, 5, 9, 2, 8, 6, 4]
    clock = FakeClock([10.0, 20.0] + [ms / 1000 for ms in timed_ms])
    stats = latency.measure_latency(clock.run_once, warmup=2, runs=10, clock=clock)
    assert clock.calls == 12
    assert stats.runs == 10
    assert stats.min == pytest.approx(1.0)
    # median of 1..10 = (5 + 6) / 2; p90 by linear interpolation: rank 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert stats.median == pytest.approx(5.5)
    assert stats.p90 == pytest.approx(9.1)
    assert stats.mean == pytest.approx(5.5)
    assert stats.samples_ms == pytest.approx(tuple(float(ms) for ms in timed_ms))
    assert stats.as_dict() == {"min": 1.0, "median": 5.5, "p90": 9.1}


def test_single_run_and_outlier():
    clock = FakeClock([0.002])
    stats = latency.measure_latency(clock.run_once, warmup=0, runs=1, clock=clock)
    assert (stats.min, stats.median, stats.p90) == pytest.approx((2.0, 2.0, 2.0))
    # One slow run among 21 moves neither the median nor p90 (nearest order statistics 1 ms).
    clock = FakeClock([0.001] * 20 + [0.5])
    stats = latency.measure_latency(clock.run_once, warmup=0, runs=21, clock=clock)
    assert stats.median == pytest.approx(1.0) and stats.p90 == pytest.approx(1.0) and stats.min == pytest.approx(1.0)
    assert stats.mean == pytest.approx((20 + 500) / 21)


def test_bad_arguments():
    with pytest.raises(ValueError, match="runs"):
        latency.measure_latency(lambda: None, warmup=0, runs=0)
    with pytest.raises(ValueError, match="no timed runs"):
        latency.LatencyStats.from_samples([])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pinning_restores_affinity_and_names_the_flag():
    before = os.sched_getaffinity(0)
    cpu = min(before)
    with latency.pinned_to_cpu(cpu):
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before
    with latency.pinned_to_cpu(None):
        assert os.sched_getaffinity(0) == before
    with pytest.raises(ValueError, match="--cpu=4096"):
        with latency.pinned_to_cpu(4096):
            pass


def test_interpreter_latency_times_a_real_model():
    """A real (tiny) TFLite model through ai-edge-litert: positive, ordered statistics."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 64], tf.float32)])
    def double(values):
        return values * 2.0 + 1.0

    content = tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()]).convert()
    stats = latency.interpreter_latency(content, num_threads=1, warmup=2, runs=20)
    assert stats.runs == 20 and 0 < stats.min <= stats.median <= stats.p90
    assert np.isfinite(stats.mean)


def test_interleaved_round_medians_time_every_model_once_per_round():
    import tensorflow as tf

    def converted(scale):
        @tf.function(input_signature=[tf.TensorSpec([1, 64], tf.float32)])
        def affine(values):
            return values * scale + 1.0
        return tf.lite.TFLiteConverter.from_concrete_functions([affine.get_concrete_function()]).convert()

    contents = {"a": converted(2.0), "b": converted(3.0)}
    seen = []
    medians = latency.interleaved_round_medians(contents, runs=5, rounds=3, warmup=1,
                                                on_round=lambda index, so_far: seen.append(
                                                    (index, {name: len(values) for name, values in so_far.items()})))
    assert list(medians) == ["a", "b"] and all(len(values) == 3 for values in medians.values())
    assert all(value > 0 for values in medians.values() for value in values)
    assert seen == [(0, {"a": 1, "b": 1}), (1, {"a": 2, "b": 2}), (2, {"a": 3, "b": 3})]
