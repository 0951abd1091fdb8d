"""Bad records are skipped and counted by reason, and too many of them stop the run naming a file.

A training run over millions of records must not die on one corrupt record, so the input pipeline never
raises on a bad example: it gives each example a status (good, or the reason it is bad), counts the bad
ones, drops them, and carries the counts in the batch (`SKIPPED` [B, R]: the bad examples met since the
previous good one). The counts therefore reach the trainer with the batches it trains on, whatever the
read-ahead, and sum correctly over replicas and workers. The reasons (`REASONS`):

- corrupt_record: a TFRecord whose length or data CRC does not match (or a truncated file). TensorFlow's
  reader cannot resynchronize after one, so the rest of that file is lost for this pass over the data:
  counted once, as one bad example, however many records followed it (trainer/record_files.py);
- malformed_record: a record of another format version, or whose sizes or class ids do not fit the run's
  spec (`distillery.records.tf_batch_parser`'s well_formed); bytes that are not a tf.train.Example at all
  lose the chunk of records parsed with them, all counted;
- non_finite_logits: NaN or infinite teacher logits (tf_batch_parser's finite_logits);
- missing_image: a path-only record whose image file cannot be read (missing, or no permission); where
  the pipeline reads and decodes in one step (every file's first record stores its image:
  trainer/data.py), such a record counts as undecodable_image;
- undecodable_image: image bytes of no format the trainer decodes (from their header), or that fail to
  decode (`distillery.record_pixels`; the decoder's error is logged).

Where an example is dropped (`number_and_drop` for the flagged ones, `ignore_errors` after the image
read and the decode for the others), running totals and the gaps it leaves in the examples' numbers
(`count_batches`) count it, and the record file it came from is kept for the error message.

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

def number_and_drop(dataset: tf.data.Dataset, chunk: int = 64) -> tf.data.Dataset:
    """Examples (dicts with status, counts, file_index), in stream order -> the good ones, without those
    three keys, each with its `position` in the stream, `totals` ([R] counts so far, of the dropped
    examples too), `nongood` (the non-good examples so far), `bad_file` (the latest file known so far to
    hold a bad record, -1 for none) and `previous_file` (the file of the good example before it).

    Running totals, not per-example counts, so that nothing is lost with the examples dropped here and
    with those dropped later because their image cannot be read or decoded (`ignore_errors`), which show as
    gaps in the positions that the non-good examples do not explain (`count_batches` takes the
    differences; `previous_file` names the file of the last one of such a gap). Vectorized over `chunk`
    examples at a time: one scan step and one mask per chunk, no function call per example.
    """
    def add(state, examples):
        position, totals, nongood, bad_file, good_file = state
        status = examples["status"]
        count = tf.size(status, out_type=tf.int64)
        contributions = examples["counts"] + tf.one_hot(status - 1, len(REASONS), dtype=tf.float32)  # 0: GOOD, MARKER
        running = totals + tf.cumsum(contributions, axis=0)
        not_good = tf.cast(tf.not_equal(status, GOOD), tf.int64)
        # The file of the latest example so far that was bad or carried counts: a running maximum of their
        # places (a [K, K] lower-triangular max, K = chunk), else the file the previous chunks ended with.
        places = tf.range(tf.size(status))
        known = tf.where(tf.reduce_sum(contributions, axis=1) > 0, places, -1)
        latest = tf.reduce_max(tf.where(places[:, None] >= places[None, :], known[None, :], -1), axis=1)
        files = tf.where(latest >= 0, tf.gather(examples["file_index"], tf.maximum(latest, 0)), bad_file)
        numbered = dict(examples, position=position + tf.range(count), totals=running,
                        nongood=nongood + tf.cumsum(not_good), bad_file=files)
        good = tf.equal(status, GOOD)
        kept = {name: tf.boolean_mask(values, good) for name, values in numbered.items()
                if name not in ("status", "counts", "file_index")}
        good_files = tf.concat([[good_file], tf.boolean_mask(examples["file_index"], good)], axis=0)
        kept["previous_file"] = good_files[:-1]
        state = (position + count, running[-1], nongood + tf.reduce_sum(not_good), files[-1], good_files[-1])
        return state, kept

    initial = (tf.constant(0, tf.int64), no_counts(), tf.constant(0, tf.int64), tf.constant(-1, tf.int32),
               tf.constant(-1, tf.int32))
    return dataset.batch(chunk).scan(initial, add).unbatch()


def count_batches(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Batches (images, targets) of good examples whose targets hold `number_and_drop`'s position, totals,
    nongood, bad_file and previous_file, and `decode_position` (their number among the examples that reached
    the decoding map; position - nongood where the image read is not a step of its own) ->
    the same with targets[SKIPPED] ([B, R]: the bad examples met since the previous example) and
    targets[BAD_FILE] ([B]) instead. An example missing between two positions that the non-good ones do
    not explain was dropped by the image read (missing_image) or, when it is also missing from the
    decode positions, by the decode (undecodable_image)."""
    missing = tf.one_hot(status_of("missing_image") - 1, len(REASONS), dtype=tf.float32)
    undecodable = tf.one_hot(status_of("undecodable_image") - 1, len(REASONS), dtype=tf.float32)

    def step_back(last, values):
        return tf.concat([last[None], values[:-1]], axis=0)

    def count(state, batch):
        last_position, last_decode, last_totals, last_nongood = state
        images, targets = batch
        targets = dict(targets)
        position, decode_position = targets.pop("position"), targets.pop("decode_position")
        totals, nongood = targets.pop("totals"), targets.pop("nongood")
        dropped = position - step_back(last_position, position) - 1 - (nongood - step_back(last_nongood, nongood))
        not_decoded = decode_position - step_back(last_decode, decode_position) - 1
        targets[SKIPPED] = (totals - step_back(last_totals, totals) + tf.cast(dropped - not_decoded, tf.float32)[:, None]
                            * missing + tf.cast(not_decoded, tf.float32)[:, None] * undecodable)
        targets[BAD_FILE] = tf.where(dropped > 0, targets.pop("previous_file"), targets.pop("bad_file"))
        return (position[-1], decode_position[-1], totals[-1], nongood[-1]), (images, targets)

    initial = (tf.constant(-1, tf.int64), tf.constant(-1, tf.int64), no_counts(), tf.constant(0, tf.int64))
    return dataset.scan(initial, count)


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
