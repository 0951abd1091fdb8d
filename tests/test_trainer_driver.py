"""The one training loop (trainer/driver.py) with a fake step function and a fake clock: steps, hooks, stops, rates.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_trainer_driver.py
"""

import pytest
import tensorflow as tf

from trainer import checkpointing, driver, task

TRACING_SECONDS = 10.0
STEP_SECONDS = 0.25
BATCH_SIZE = 4


class FakeStep:
    """A step function over an iterator of numbers: returns {"loss": number}; the first call "traces" longer."""

    def __init__(self):
        self.now = 0.0
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def __call__(self, iterator) -> dict:
        self.now += TRACING_SECONDS if self.calls == 0 else STEP_SECONDS
        self.calls += 1
        return {"loss": next(iterator)}


class RecordingHook(driver.Hook):
    def __init__(self, stop_at=None):
        self.steps, self.logged, self.ended = [], [], []
        self.stop_at = stop_at

    def after_step(self, state):
        self.steps.append(state.step)
        self.logged.append(state.logged)
        if state.step == self.stop_at:
            state.request_stop("enough")

    def end(self, state):
        self.ended.append((state.step, state.stop_reason))


def _run(step, start_step, end_step, **options):
    lines = []
    values = iter(float(value) for value in range(start_step + 1, 1000))
    totals = driver.run_steps(step, values, start_step, end_step, batch_size=BATCH_SIZE, log=lines.append,
                              clock=step.clock, **options)
    return totals, lines


def test_steps_log_lines_and_rates_leave_the_tracing_step_out():
    step = FakeStep()
    totals, lines = _run(step, 0, 7, log_every=3)
    assert step.calls == 7
    # Interval 1 times steps 2-3 (0.5 s for 8 images), intervals 2 and 3 every step: 16 images/s throughout;
    # with the 10 s tracing step counted, the first line would say 12 / 10.5 s.
    assert lines == ["step 3/7  loss 2.0000  16.0 images/s", "step 6/7  loss 5.0000  16.0 images/s",
                     "step 7/7  loss 7.0000  16.0 images/s"]
    assert totals == driver.RunTotals(steps=7, last_step=7, terms={"loss": 7.0}, steps_per_second=4.0,
                                      images_per_second=16.0, stop_reason="end_step")


def test_a_first_interval_of_one_step_has_no_rate_and_one_step_has_no_totals():
    step = FakeStep()
    totals, lines = _run(step, 0, 2, log_every=1, label="phase")
    assert lines == ["phase: step 1/2  loss 1.0000  n/a images/s", "phase: step 2/2  loss 2.0000  16.0 images/s"]
    assert totals.steps_per_second == 4.0
    totals, _ = _run(FakeStep(), 0, 1, log_every=1)
    assert totals.steps == 1 and totals.steps_per_second is None and totals.images_per_second is None


def test_hooks_run_after_every_step_of_a_resumed_run_then_once_at_the_end():
    step, first, second = FakeStep(), RecordingHook(), RecordingHook()
    seen = []
    totals, lines = _run(step, 4, 8, log_every=2, hooks=[first, driver.StepCallback(seen.append), second])
    assert first.steps == second.steps == seen == [5, 6, 7, 8]
    assert first.logged == [False, True, False, True]
    assert first.ended == second.ended == [(8, "end_step")]
    assert [line.split("  ")[0] for line in lines] == ["step 6/8", "step 8/8"]
    assert totals.steps == 4 and totals.last_step == 8 and totals.terms == {"loss": 7.5}  # (7 + 8) / 2


def test_a_hook_stop_request_ends_the_run_and_logs_the_open_interval():
    step, stopper, other = FakeStep(), RecordingHook(stop_at=5), RecordingHook()
    totals, lines = _run(step, 0, 100, log_every=4, hooks=[stopper, other])
    assert step.calls == 5 and other.steps == [1, 2, 3, 4, 5]  # the other hooks still see the stop step
    assert lines == ["step 4/100  loss 2.5000  16.0 images/s", "step 5/100  loss 5.0000  16.0 images/s"]
    assert totals.stop_reason == "enough" and totals.steps == 5 and totals.terms == {"loss": 5.0}
    assert stopper.ended == other.ended == [(5, "enough")]


def test_an_empty_range_takes_no_step_and_bad_log_every_is_refused():
    step, hook = FakeStep(), RecordingHook()
    totals, lines = _run(step, 6, 6, log_every=2, hooks=[hook])
    assert step.calls == 0 and lines == [] and hook.steps == [] and hook.ended == [(6, "end_step")]
    assert totals == driver.RunTotals(steps=0, last_step=6, terms={}, steps_per_second=None, images_per_second=None,
                                      stop_reason="end_step")
    with pytest.raises(ValueError, match="log_every must be positive"):
        _run(FakeStep(), 0, 3, log_every=0)


def _read_scalars(directory):
    scalars = {}
    for event_file in sorted(directory.iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return scalars


def test_distillation_terms_of_tensor_sums_go_to_the_line_and_to_tensorboard(tmp_path):
    """The trainer's step outputs are tensors; the task turns the interval's sums into the logged terms."""
    distillation = task.DistillationTask("unused-*", 32, BATCH_SIZE, alpha=0.5, temperature=2.0)
    outputs = iter([{"loss": 8.0, "cross_entropy": 6.0, "kl_divergence": 4.0, "labeled": 3.0, "correct": 2.0,
                     "examples": 4.0},
                    {"loss": 4.0, "cross_entropy": 0.0, "kl_divergence": 2.0, "labeled": 0.0, "correct": 0.0,
                     "examples": 4.0}])
    step = FakeStep()

    def tensor_step(iterator):
        step(iter([0.0]))
        return {name: tf.constant(value) for name, value in next(iterator).items()}

    writer = tf.summary.create_file_writer(str(tmp_path / "logs"))
    lines = []
    totals = driver.run_steps(tensor_step, outputs, 0, 2, batch_size=BATCH_SIZE, log_every=1,
                              summarize=distillation.interval_terms, writer=writer, log=lines.append, clock=step.clock)
    writer.close()
    assert lines == ["step 1/2  loss 2.0000  cross_entropy 2.0000  kl_divergence 1.0000  train_top1 0.6667  n/a images/s",
                     "step 2/2  loss 1.0000  cross_entropy 0.0000  kl_divergence 0.5000  train_top1 n/a  16.0 images/s"]
    assert totals.terms == {"loss": 1.0, "cross_entropy": 0.0, "kl_divergence": 0.5, "train_top1": None}
    scalars = _read_scalars(tmp_path / "logs")
    assert scalars["loss"] == [(1, 2.0), (2, 1.0)] and scalars["kl_divergence"] == [(1, 1.0), (2, 0.5)]
    assert scalars["train_top1"] == [(1, pytest.approx(2 / 3))]  # no labelled example in step 2: no scalar
    assert scalars["images_per_second"] == [(2, 16.0)]  # step 1 traced: no rate to write


def test_checkpoint_keeper_hook_saves_on_the_interval_and_the_last_step(tmp_path):
    def run(model_dir, every, start_step, end_step):
        counter = tf.Variable(start_step, dtype=tf.int64)
        checkpoint = tf.train.Checkpoint(step=counter)
        strategy = tf.distribute.get_strategy()
        keeper = checkpointing.CheckpointKeeper(checkpoint, counter, str(model_dir), str(model_dir), strategy, every,
                                                max_to_keep=10)

        def counting_step(iterator):
            counter.assign_add(1)
            return {"loss": next(iterator)}

        driver.run_steps(counting_step, iter(range(100)), start_step, end_step, batch_size=1, log_every=100,
                         hooks=[keeper], log=lambda line: None)
        return sorted(int(path.name[len("ckpt-"):-len(".index")]) for path in (model_dir / "checkpoints").glob("*.index"))

    assert run(tmp_path / "every3", every=3, start_step=0, end_step=7) == [3, 6, 7]
    assert run(tmp_path / "every3", every=3, start_step=7, end_step=7) == [3, 6, 7]  # nothing to do: no new save
    assert run(tmp_path / "every4", every=4, start_step=0, end_step=8) == [4, 8]  # the last step saved once
    assert run(tmp_path / "end_only", every=0, start_step=0, end_step=5) == [5]
