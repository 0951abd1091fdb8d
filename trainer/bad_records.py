"""Bad records are skipped and counted by reason, and too many of them stop the run naming a file.

A training run over millions of records must not die on one corrupt record, so the input pipeline never
raises on a bad example: it gives each example a status (good, or the reason it is bad), counts the bad
ones, drops them, and carries the counts in the batch (`SKIPPED` [B, R]: the bad examples met since the
previous good one). The counts therefore reach the trainer with the batches it trains on, whatever the
read-ahead, and sum correctly over replicas and workers. The reasons (`REASONS`):

- corrupt_record: a TFRecord whose length or data CRC does not match (or a truncated file). TensorFlow's
  reader cannot resynchronize after one, so the rest of that file is lost for this pass over the data:
  counted once, as one bad example, however many records followed it (trainer/record_files.py);
- malformed_record: a record that is not a soft-label record of the run's spec (it does not parse);
- non_finite_logits: NaN or infinite teacher logits (`distillery.records.tf_parser`'s finite_logits);
- missing_image: a path-only record whose image file cannot be read (missing, or no permission);
- undecodable_image: image bytes of no format the trainer decodes (from their header), or that fail to
  decode (`distillery.record_pixels`); for the latter the file is not known (the decode error is logged).

The training step adds `step_outputs(targets)` to its outputs (one `skipped/REASON` sum per reason and
`skipped_file`, the index of a record file that held a bad record); `BadRecordLimit`, a hook of
trainer/driver.py, adds them up at every log interval, logs a line when the count grows, writes
`skipped/REASON` TensorBoard scalars, and raises `TooManyBadRecordsError` naming a file once more than
--max_bad_fraction of the examples seen (good + bad) are bad. The run's summary.json holds `skipped`.

    python -c "from trainer import bad_records; print(bad_records.REASONS)"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf
from absl import logging

from distillery import records
from trainer import driver

REASONS = ("corrupt_record", "malformed_record", "non_finite_logits", "missing_image", "undecodable_image")
GOOD = 0  # an example's status: GOOD, 1 + REASONS.index(reason), or MARKER
MARKER = len(REASONS) + 1  # an end-of-file element that only carries counts; not an example itself
SKIPPED = "skipped"  # targets key: [B, R] float32 counts of the bad examples met before each example
BAD_FILE = "bad_file"  # targets key: [B] int32, index of the latest record file known to hold a bad record, or -1
FILE_OUTPUT = "skipped_file"
DEFAULT_MAX_BAD_FRACTION = 0.001


def status_of(reason: str) -> int:
    return 1 + REASONS.index(reason)


def output_name(reason: str) -> str:
    return f"skipped/{reason}"


def one_count(reason: str, count=1.0) -> tf.Tensor:
    """[R] float32 counts: `count` of `reason`, 0 elsewhere."""
    return tf.one_hot(REASONS.index(reason), len(REASONS), dtype=tf.float32) * tf.cast(count, tf.float32)


def no_counts() -> tf.Tensor:
    return tf.zeros([len(REASONS)], tf.float32)


class TooManyBadRecordsError(records.RecordError):
    """More than --max_bad_fraction of the examples seen were bad; the message names a file that held one."""


# ----------------------------------------------------------------------------- in the input pipeline

def number(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Elements (dicts with `counts`) -> (position, element with `totals`), before a map that may drop some.

    `position` numbers the elements, `totals` adds up the counts so far including the element's own, so that
    the counts an element carries survive its being dropped later: `count_and_drop` takes differences.
    """
    def add(state, element):
        position, totals = state
        totals = totals + element["counts"]
        return (position + 1, totals), (position, dict(element, totals=totals))

    return dataset.scan((tf.constant(0, tf.int64), no_counts()), add)


def count_and_drop(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """(position, images, targets, meta) elements, in stream order -> (images, targets) of the good ones,
    with targets[SKIPPED] and targets[BAD_FILE] added.

    `position` and meta's `totals` come from `number`, before an order-keeping (deterministic) map whose
    failures `ignore_errors` dropped: a gap in the positions is that many undecodable images. meta also holds
    status (int32: GOOD, a reason's, or MARKER), counts ([R] float32, what the element itself carried, e.g.
    its file's bad records) and file_index (int32).
    """
    undecodable = tf.one_hot(status_of("undecodable_image") - 1, len(REASONS), dtype=tf.float32)

    def count(state, element):
        last_position, counted, pending, bad_file = state
        position, images, targets, meta = element
        status = meta["status"]
        reason = tf.one_hot(status - 1, len(REASONS), dtype=tf.float32)  # all zero for GOOD and MARKER
        pending = pending + reason + tf.cast(position - last_position - 1, tf.float32) * undecodable
        known = (tf.reduce_sum(meta["counts"]) > 0) | (tf.reduce_sum(reason) > 0)
        bad_file = tf.where(known, meta["file_index"], bad_file)
        good = tf.equal(status, GOOD)
        targets = dict(targets)
        targets[SKIPPED] = tf.where(good, meta["totals"] - counted + pending, no_counts())
        targets[BAD_FILE] = bad_file
        state = (position, tf.where(good, meta["totals"], counted), tf.where(good, no_counts(), pending), bad_file)
        return state, (good, images, targets)

    def is_good(good, images, targets):
        del images, targets
        return good

    def without_flag(good, images, targets):
        del good
        return images, targets

    initial = (tf.constant(-1, tf.int64), no_counts(), no_counts(), tf.constant(-1, tf.int32))
    return dataset.scan(initial, count).filter(is_good).map(without_flag)


# --------------------------------------------------------------------------------- in the train step

def step_outputs(targets: Mapping[str, tf.Tensor]) -> dict:
    """A replica's share of one step's counts: `skipped/REASON` sums and FILE_OUTPUT (the largest file index,
    -1 for none; float32 like every step output, which the driver adds up)."""
    if SKIPPED not in targets:
        return {}
    sums = tf.reduce_sum(targets[SKIPPED], axis=0)
    outputs = {output_name(reason): sums[index] for index, reason in enumerate(REASONS)}
    outputs[FILE_OUTPUT] = tf.cast(tf.reduce_max(tf.concat([targets[BAD_FILE], [-1]], axis=0)), tf.float32)
    return outputs


def reduce_step_outputs(strategy: tf.distribute.Strategy, per_replica: Mapping) -> dict:
    """The step's per-replica outputs summed over replicas and workers, except FILE_OUTPUT: the largest file
    index among this worker's replicas (a file to name, not a count)."""
    reduced = {}
    for name, value in per_replica.items():
        if name == FILE_OUTPUT:
            reduced[name] = tf.reduce_max(tf.stack(strategy.experimental_local_results(value)))
        else:
            reduced[name] = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
    return reduced


# ------------------------------------------------------------------------------------ on the host

class BadRecordLimit(driver.Hook):
    """Adds up the skipped counts at every log interval; stops the run past `max_bad_fraction`.

    Args:
      paths: the record files, in the order the input pipeline numbers them (`records.expand_paths`).
      max_bad_fraction: the largest fraction of bad examples among those seen (good + bad) that is tolerated.
      writer: when given, `skipped/REASON` (totals so far) go to TensorBoard at each log step.
      log: where the line goes when the count grew.
    """

    def __init__(self, paths: Sequence[str], max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                 writer: tf.summary.SummaryWriter | None = None, log: Callable[[str], None] = logging.warning):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"--max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.paths = list(paths)
        self.max_bad_fraction = max_bad_fraction
        self.writer = writer
        self.log = log
        self.totals = dict.fromkeys(REASONS, 0)
        self.good = 0
        self.bad_file: int | None = None
        self._pending: list[tuple[int, Mapping]] = []
        self._logged_bad = 0

    def skipped(self) -> dict:
        """{reason: count} over the run so far (summary.json's `skipped`)."""
        return dict(self.totals)

    def after_step(self, state: driver.LoopState) -> None:
        self._pending.append((state.step, state.outputs))
        if state.logged:
            self._close(state.step)

    def end(self, state: driver.LoopState) -> None:
        self._close(state.step)

    def _close(self, step: int) -> None:
        if not self._pending:
            return
        for _, outputs in self._pending:  # the device is waited for here, once per interval
            for reason in REASONS:
                self.totals[reason] += int(round(float(outputs.get(output_name(reason), 0.0))))
            self.good += int(round(float(outputs.get("examples", 0.0))))
            if FILE_OUTPUT in outputs and float(outputs[FILE_OUTPUT]) >= 0:
                self.bad_file = int(float(outputs[FILE_OUTPUT]))
        self._pending = []
        bad = sum(self.totals.values())
        seen = self.good + bad
        if bad > self._logged_bad:
            self.log(f"step {step}: skipped {bad} bad example(s) of {seen} seen ({self._by_reason()}); "
                     f"{self._file_words()}")
            self._logged_bad = bad
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for reason, count in self.totals.items():
                    driver.write_scalar(output_name(reason), count)
            self.writer.flush()
        if bad > self.max_bad_fraction * seen:
            raise TooManyBadRecordsError(
                f"step {step}: {bad} of the {seen} examples seen are bad ({bad / seen:.4%}), more than "
                f"--max_bad_fraction={self.max_bad_fraction:g} ({self._by_reason()}); {self._file_words()}")

    def _by_reason(self) -> str:
        return ", ".join(f"{reason} {count}" for reason, count in self.totals.items() if count)

    def _file_words(self) -> str:
        if self.bad_file is None or not 0 <= self.bad_file < len(self.paths):
            return "the file is not known (images that failed to decode; the log's warnings name each error)"
        return f"{self.paths[self.bad_file]} holds bad records"
