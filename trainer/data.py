"""The trainer's input pipeline: soft-label records -> replayed views -> batches.

tf.data over the record files (local paths or gs://, through tf.io.gfile): the files are shuffled and
read interleaved, the serialized records are shuffled, then each record is parsed with
`distillery.records.tf_parser`, and its image decoded and one of its V stored views replayed by
`distillery.record_pixels` (the graph twin of what calibration and the benchmark read; the view is
`distillery.views.crop_view`, the function extraction used), so the student sees the pixels the teacher
saw. The view is drawn at random per example and per pass over the data, from a stateless seed
(seed, input pipeline, position in the stream): the stream is a pure function of the seed, whatever
the number of replicas it is split over. Batches are prefetched; maps run with AUTOTUNE parallelism.

Teacher distributions are rebuilt only by `distillery.records.teacher_distribution` (top-k handled as
that module documents), vectorized after batching.

Evaluation (`training=False`) reads each file once, in order, takes the centre crop (the view V = 1
extraction stores) without flip, and yields the labels only.

    python -c "from trainer import data; print(next(iter(data.make_dataset('records-*', 128, 8, True, 0, \
temperature=2.0)))[1]['teacher_probabilities'].shape)"
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from distillery import record_pixels, records

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 1024
DEFAULT_CYCLE_LENGTH = 8


def make_dataset(pattern: str | Sequence[str], image_size: int, batch_size: int, training: bool, seed: int = 0, *,
                 spec: records.RecordSpec | None = None, temperature: float | None = None,
                 teacher_image_size: tuple[int, int] | None = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, cycle_length: int = DEFAULT_CYCLE_LENGTH,
                 input_context: tf.distribute.InputContext | None = None,
                 repeat: bool | None = None) -> tf.data.Dataset:
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
      shuffle_buffer: records in the shuffle buffer.
      cycle_length: files read at once.
      input_context: from `strategy.distribute_datasets_from_function`; shards by file when there are
        at least as many files as input pipelines, by record otherwise.
      repeat: repeat forever (default: `training`).

    Returns:
      A dataset of (images [B, S, S, 3] float32 0..255, targets dict). targets always holds `labels`
      [B] int32 (-1 = unlabeled); see `temperature` and `teacher_image_size` for the rest (training only).
    """
    paths = records.expand_paths(pattern)
    spec = spec or records.read_spec(paths)
    repeat = training if repeat is None else repeat
    parse = records.tf_parser(spec)
    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id

    files = tf.data.Dataset.from_tensor_slices(paths)
    shard_files = pipelines > 1 and len(paths) >= pipelines
    if shard_files:
        files = files.shard(pipelines, pipeline_id)
    if training:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    if training:
        serialized = files.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(paths)),
                                      num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        serialized = files.flat_map(tf.data.TFRecordDataset)
    if pipelines > 1 and not shard_files:
        serialized = serialized.shard(pipelines, pipeline_id)
    if training:
        serialized = serialized.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    view_seed = tf.constant(seed, tf.int64) * 1_000_003 + pipeline_id

    def replay(position: tf.Tensor, example: tf.Tensor):
        parsed = parse(example)
        image = record_pixels.decode_tensor(parsed["encoded_image"], parsed["image_path"])
        label = tf.cast(parsed["label"], tf.int32)
        if not training:
            return record_pixels.eval_view_tensor(image, image_size), {"labels": label}
        view = tf.random.stateless_uniform([], seed=tf.stack([view_seed, position]), minval=0,
                                           maxval=spec.num_views, dtype=tf.int32)
        crop, flip = parsed["crops"][view], parsed["flips"][view]
        targets = {"labels": label, "class_ids": parsed["class_ids"][view], "logits": parsed["logits"][view],
                   "logsumexp": parsed["logsumexp"][view]}
        if teacher_image_size is not None:
            targets["teacher_images"] = record_pixels.view_tensor(image, crop, flip, teacher_image_size)
        return record_pixels.view_tensor(image, crop, flip, image_size), targets

    dataset = serialized.enumerate().map(replay, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE)
    if training and temperature is not None:
        def to_probabilities(images, targets):
            targets = dict(targets)
            targets["teacher_probabilities"] = records.teacher_distribution(
                targets.pop("class_ids"), targets.pop("logits"), targets.pop("logsumexp"),
                spec.num_classes, temperature)
            return images, targets

        dataset = dataset.map(to_probabilities, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def count_records(pattern: str | Sequence[str]) -> int:
    """How many records the files of `pattern` hold (reads them all; for eval sets and tests)."""
    return sum(1 for path in records.expand_paths(pattern) for _ in tf.data.TFRecordDataset(path))

