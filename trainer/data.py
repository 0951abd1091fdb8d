"""The trainer's input pipeline: soft-label records -> replayed views -> batches, all in the TF graph.

tf.data over the record files (local paths or gs://): the files are shuffled and read by a parallel
interleave (`deterministic=False` in training, so a slow file never stalls the others; evaluation reads
them in order), each through trainer/record_files.py (TFRecord framing, `distillery.records.tf_batch_parser`
on chunks of records, the view choice), the examples are shuffled, the bad ones dropped, the image bytes
taken (stored, else read from image/path with tf.io.read_file, local or gs://), decoded and one of its V
stored views replayed by `distillery.record_pixels` (TensorFlow ops only, no Python: decoding scales with
the cores; the view is `distillery.views.crop_view`, the function extraction used; a JPEG is decoded only
in the view's window, to the same pixels), so the student sees the pixels the teacher saw.
The view is drawn at random per example and per pass over the data, from a
stateless seed (seed, input pipeline, the file's visit number, the record's index in its file): it depends
on which record it is, not on when the interleave delivered it. Batches are prefetched; maps run with
AUTOTUNE parallelism. No step runs a function per example but the image read and the decode: the rest is
vectorized over chunks of records (docs/results.md "Training" has its cost against a bare loop).

Bad examples never stop the pipeline: a corrupt TFRecord, a record that does not parse, non-finite
logits, a missing or undecodable image are dropped and counted by reason, and every training batch
carries the counts of the bad examples met before its examples (`targets["skipped"]` [B, R] and
`targets["bad_file"]` [B]; trainer/bad_records.py, which the trainer's loop reads at each log interval).

Teacher distributions are rebuilt only by `distillery.records.teacher_distribution` (top-k handled as
that module documents), vectorized after batching.

Evaluation (`training=False`) reads each file once, in order, takes the centre crop (the view V = 1
extraction stores) without flip, skips bad examples, and yields the labels only.

    python -c "from trainer import data; print(next(iter(data.make_dataset('records-*', 128, 8, True, 0, \
temperature=2.0)))[1]['teacher_probabilities'].shape)"
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from distillery import cpus, record_pixels, records
from trainer import bad_records, record_files

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 16384
DEFAULT_CYCLE_LENGTH = 8
_VISIT_STRIDE = 1 << 32  # view seeds: visit * stride + record index, unique while files hold < 2**32 records


def make_dataset(pattern: str | Sequence[str], image_size: int, batch_size: int, training: bool, seed: int = 0, *,
                 spec: records.RecordSpec | None = None, temperature: float | None = None,
                 teacher_image_size: tuple[int, int] | None = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, cycle_length: int = DEFAULT_CYCLE_LENGTH,
                 input_context: tf.distribute.InputContext | None = None,
                 repeat: bool | None = None, deterministic: bool | None = None,
                 threads: int | None = None, images_stored: bool | None = None) -> tf.data.Dataset:
    """Batches of replayed views with their teacher targets.

    Args:
      pattern: glob(s) of soft-label record files (comma-separated or a list; local or gs://).
      image_size: S, the student's input side.
      batch_size: examples per batch this dataset yields (under tf.distribute: the per-replica batch).
      training: True: shuffle, repeat, random stored view per example, drop the last partial batch.
        False: one ordered pass, centre crop, labels only.
      seed: fixes the file order, the shuffles and the view choices.
      spec: the records' RecordSpec (read from the files when None).
      temperature: when set, targets hold `teacher_probabilities` [B, C] at this temperature; when None
        the raw stored view: `class_ids` [B, k], `logits` [B, k], `logsumexp` [B].
      teacher_image_size: (height, width); when set (online distillation), targets also hold
        `teacher_images` [B, h, w, 3]: the same view cropped at the teacher's input size.
      shuffle_buffer: examples in the shuffle buffer.
      cycle_length: files read at once in training (evaluation reads one after the other).
      input_context: from `strategy.distribute_datasets_from_function`; shards by file when there are
        at least as many files as input pipelines, by record otherwise.
      repeat: repeat forever (default: `training`).
      deterministic: whether the interleave delivers records in a fixed order (default: not `training`);
        True makes the stream a pure function of the seed (tests). A process with op determinism on
        (TF_DETERMINISTIC_OPS=1, tf.config.experimental.enable_op_determinism()) always reads in order.
      threads: in training, the size of a private thread pool for this pipeline (0: tf.data's shared
        pool, every core); default `input_threads()`.
      images_stored: whether the records hold their image bytes, so that reading and decoding are one step
        (default: `records.survey`, from every file's first record).

    Returns:
      A dataset of (images [B, S, S, 3] float32 0..255, targets dict). targets always holds `labels`
      [B] int32 (-1 = unlabeled); in training also `skipped` and `bad_file` (trainer/bad_records.py), and
      see `temperature` and `teacher_image_size` for the rest.
    """
    paths = records.expand_paths(pattern)
    if spec is None or images_stored is None:
        survey = records.survey(paths)
        spec = spec or survey.spec
        images_stored = survey.images_stored if images_stored is None else images_stored
    repeat = training if repeat is None else repeat
    deterministic = not training if deterministic is None else deterministic
    parse_records = records.tf_batch_parser(spec)
    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id

    files = tf.data.Dataset.from_tensor_slices({
        "path": paths, "size": tf.constant(record_files.file_sizes(paths), tf.int64),
        "index": tf.range(len(paths), dtype=tf.int32)})
    shard_files = pipelines > 1 and len(paths) >= pipelines
    if shard_files:
        files = files.shard(pipelines, pipeline_id)
    if training:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    files = files.enumerate().map(lambda visit, file: dict(file, visit=visit))
    view_seed = tf.constant(seed, tf.int64) * 1_000_003 + pipeline_id

    def parse_chunk(serialized: tf.Tensor, positions: tf.Tensor, chunk_key: tf.Tensor) -> dict:
        parsed = parse_records(serialized)
        fields = {name: parsed[name] for name in ("encoded_image", "image_path", "finite_logits", "well_formed")}
        fields["label"] = tf.cast(parsed["label"], tf.int32)
        if training:  # the view is chosen here, so that the shuffle buffer holds one view's targets
            draws = tf.random.stateless_uniform([record_files.CHUNK], seed=tf.stack([view_seed, chunk_key]), minval=0,
                                                maxval=spec.num_views, dtype=tf.int32)
            view = tf.gather(draws, positions)
            for name, field in (("crop", "crops"), ("flip", "flips"), ("class_ids", "class_ids"), ("logits", "logits"),
                                ("logsumexp", "logsumexp")):
                fields[name] = tf.gather(parsed[field], view, batch_dims=1)
        return fields

    record_shards = (pipelines, pipeline_id) if pipelines > 1 and not shard_files else (1, 0)
    blank = record_files.blank_record(spec)
    examples = files.interleave(lambda file: record_files.read_file(file, parse_chunk, blank, *record_shards),
                                cycle_length=min(cycle_length, len(paths)) if training else 1,
                                num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if training:
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    good = bad_records.number_and_drop(examples)

    def read_image(element: dict) -> dict:
        """The image bytes: the stored ones, else the file at image/path (raises when it cannot be read)."""
        element = dict(element)
        encoded, path, stored_format = element.pop("encoded_image"), element.pop("image_path"), element["image_format"]

        def from_path():
            data = tf.io.read_file(path)
            return data, record_pixels.image_format_tensor(data)

        element["image"], element["image_format"] = tf.cond(tf.strings.length(encoded) > 0,
                                                            lambda: (encoded, stored_format), from_path)
        return element

    def replay(decode_position: tf.Tensor, element: dict):
        data, image_format = element["image"], element["image_format"]
        if not training:
            return record_pixels.decode_eval_view_tensor(data, image_format, image_size), {"labels": element["label"]}
        targets = {name: element[name] for name in ("class_ids", "logits", "logsumexp", "position", "totals",
                                                   "nongood", "bad_file", "previous_file")}
        targets.update(labels=element["label"], decode_position=decode_position)
        if teacher_image_size is None:  # a JPEG decoded only in the view's window
            return record_pixels.decode_view_tensor(data, image_format, element["crop"], element["flip"],
                                                    image_size), targets
        image = record_pixels.decode_image_tensor(data, image_format)  # two views of one image
        targets["teacher_images"] = record_pixels.view_tensor(image, element["crop"], element["flip"],
                                                              teacher_image_size)
        return record_pixels.view_tensor(image, element["crop"], element["flip"], image_size), targets

    # An image that cannot be read or decoded is dropped by ignore_errors (which logs the error); in
    # training, bad_records.count_batches counts it from the gaps it leaves in the examples' numbers: with
    # the read a step of its own, a gap in the numbers after it is a decode's (undecodable_image), the
    # rest the read's (missing_image). When every file's first record stores its image, read and decode
    # are one step (one map and one ignore_errors less per example: docs/results.md "Training"), and every
    # gap counts as undecodable_image (a path-only record among stored ones, which extraction does not
    # write, whose file is missing too).
    if images_stored:
        dataset = good.map(lambda element: replay(element["position"] - element["nongood"], read_image(element)),
                           num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors(log_warning=True)
    else:
        with_images = good.map(read_image, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors(log_warning=True)
        dataset = (with_images.enumerate().map(replay, num_parallel_calls=AUTOTUNE, deterministic=True)
                   .ignore_errors(log_warning=True))
    dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE)
    if training:
        dataset = bad_records.count_batches(dataset)
    if training and temperature is not None:
        def to_probabilities(images, targets):
            targets = dict(targets)
            targets["teacher_probabilities"] = records.teacher_distribution(
                targets.pop("class_ids"), targets.pop("logits"), targets.pop("logsumexp"),
                spec.num_classes, temperature)
            return images, targets

        dataset = dataset.map(to_probabilities, num_parallel_calls=AUTOTUNE)
    threads = input_threads() if threads is None else threads
    if training and threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        dataset = dataset.with_options(options)
    return dataset.prefetch(AUTOTUNE)


def input_threads() -> int:
    """Threads for the training input pipeline: 0 (tf.data's shared pool, all cores) when an accelerator
    trains, else a private pool of a quarter of the cores it may use (affinity and cgroup quota:
    distillery.cpus; at least one): on a CPU the train step needs the
    cores, and an input pipeline on all of them slows it by more than it feeds it (docs/results.md
    "Training": the loop against the step alone)."""
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return 0
    return max(1, cpus.available_cpus() // 4)


def count_records(pattern: str | Sequence[str]) -> int:
    """How many records the files of `pattern` hold (reads them all; for eval sets and tests)."""
    return sum(1 for path in records.expand_paths(pattern) for _ in tf.data.TFRecordDataset(path))

