"""One record file as a tf.data stream of records that never raises: TFRecord framing and parsing, by chunks.

`read_file` is what the trainer's input pipeline interleaves over its files (trainer/data.py). Per file, in
chunks of CHUNK records (one vectorized parse per chunk instead of ~30 ops per record):

1. the TFRecord framing (tf.data.TFRecordDataset with ignore_errors). TensorFlow's reader cannot
   resynchronize after a record whose length or data CRC is wrong (or a truncated file): it moves on to
   the next file. So a corrupt record loses the rest of its file for this pass; it is detected by adding
   up the bytes read (16 framing bytes + the data per record) against the file's size, and counted once
   as corrupt_record (trainer/bad_records.py), on the file's end-of-file marker;
2. parsing (`parse_chunk`: `distillery.records.tf_batch_parser` and a view choice) flags records of
   another version or the wrong sizes (malformed_record), non-finite logits (non_finite_logits) and stored
   images of no format the trainer decodes (undecodable_image, from their header), each on its record. A
   chunk holding bytes that are not tf.train.Examples at all (which passed their CRC: a writer's bug)
   does not parse and is lost whole: its records are counted as malformed_record.

Path-only images are read later, after the shuffle (trainer/data.py), so that the shuffle buffer holds
their paths, not their bytes.

    python -c "from trainer import record_files; print(record_files.file_sizes(['/etc/hostname']))"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
import tensorflow as tf

from distillery import record_pixels, records
from trainer import bad_records

CHUNK = 64  # records parsed together
FRAME_BYTES = 16  # TFRecord framing per record: length (8), its CRC (4), the data's CRC (4)
STAT_THREADS = 16
CHUNK_STRIDE = 1 << 32  # chunk keys: visit * stride + the chunk's first record index

ParseFunction = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict]


def file_sizes(paths: Sequence[str]) -> list[int]:
    """Sizes in bytes of the record files (local or gs://; stat calls in parallel threads)."""
    with futures.ThreadPoolExecutor(max_workers=STAT_THREADS) as pool:
        return list(pool.map(lambda path: int(tf.io.gfile.stat(path).length), paths))


def blank_record(spec: records.RecordSpec) -> bytes:
    """A valid serialized record of `spec` without an image: what the end-of-file marker is parsed as."""
    views = spec.num_views
    record = records.SoftLabelRecord(
        image_id="", label=-1, teachers=["none"], num_classes=spec.num_classes,
        crops=np.tile(np.array([[0, 0, 1, 1]], np.float32), (views, 1)), flips=np.zeros(views, bool),
        class_ids=np.tile(np.arange(spec.top_k, dtype=np.int32), (views, 1)),
        logits=np.zeros((views, spec.top_k), np.float32), logsumexp=np.zeros(views, np.float32),
        logit_dtype=spec.logit_dtype)
    return records.encode(record)


def read_file(file: dict, parse_chunk: ParseFunction, blank: bytes, pipelines: int = 1,
              pipeline_id: int = 0) -> tf.data.Dataset:
    """The records of one record file, with statuses and counts, then its end-of-file marker.

    Args:
      file: {"path": string, "size": int64 bytes, "index": int32 (the file's number in the run's file list),
        "visit": int64 (how many files this pipeline opened before this one)}.
      parse_chunk: (serialized [m], positions [m] in their chunk, chunk key) -> dict of [m, ...] tensors
        holding at least encoded_image, image_path, finite_logits and well_formed (records.tf_batch_parser's
        keys). The chunk key (visit * CHUNK_STRIDE + the chunk's first record index) and the positions
        identify each record of this file visit, for choices that must not depend on read order.
      blank: `blank_record(spec)`, parsed as the end-of-file marker.
      pipelines, pipeline_id: keep only the records whose index in the file is pipeline_id modulo pipelines
        (sharding by record when there are fewer files than input pipelines).

    Returns:
      A dataset of dicts: the parse's keys except finite_logits and well_formed, plus image_format
      (record_pixels' code of the stored bytes), file_index, status (bad_records.GOOD, a reason's status,
      or MARKER: the end of the file) and counts ([R] float32: the file's bad records that no element stands
      for, carried by the element after them: a lost chunk's, and the corruption on the marker).
    """
    framed = (tf.data.TFRecordDataset(file["path"]).ignore_errors(log_warning=True).batch(CHUNK)
              .map(lambda serialized: (serialized, False))
              .concatenate(tf.data.Dataset.from_tensors((tf.constant([blank]), True))))

    def frame(state, item):
        consumed, read = state
        serialized, end = item
        size = tf.where(end, tf.constant(0, tf.int64), tf.size(serialized, out_type=tf.int64))
        length = tf.reduce_sum(tf.cast(tf.strings.length(serialized), tf.int64) + FRAME_BYTES)
        chunk = {"serialized": serialized, "first_index": read, "end": end,
                 "corrupt": end & tf.not_equal(consumed, file["size"]) & tf.equal(read % pipelines, pipeline_id)}
        return (consumed + tf.where(end, tf.constant(0, tf.int64), length), read + size), chunk

    def parse_stage(chunk):
        end = chunk["end"]
        indices = chunk["first_index"] + tf.range(tf.size(chunk["serialized"], out_type=tf.int64))
        keep = end | tf.equal(indices % pipelines, pipeline_id)
        serialized, indices = tf.boolean_mask(chunk["serialized"], keep), tf.boolean_mask(indices, keep)
        fields = dict(parse_chunk(serialized, indices - chunk["first_index"],
                                  file["visit"] * CHUNK_STRIDE + chunk["first_index"]))
        finite, well_formed = fields.pop("finite_logits"), fields.pop("well_formed")
        image_format = record_pixels.image_format_tensor(fields["encoded_image"])
        stored = tf.strings.length(fields["encoded_image"]) > 0
        status = tf.where(stored & tf.equal(image_format, record_pixels.UNSUPPORTED),
                          bad_records.status_of("undecodable_image"), bad_records.GOOD)
        status = tf.where(finite, status, bad_records.status_of("non_finite_logits"))
        status = tf.where(well_formed, status, bad_records.status_of("malformed_record"))
        status = tf.where(end, bad_records.MARKER, status)
        # Serial numbers of the records this pipeline keeps; the marker's is the count of them.
        serial = tf.where(end, (indices - pipeline_id + pipelines - 1) // pipelines, indices // pipelines)
        corrupt = tf.cast(chunk["corrupt"], tf.float32) * bad_records.one_count("corrupt_record")
        return dict(fields, image_format=image_format, status=status, serial=serial,
                    counts=tf.tile(corrupt[None], [tf.size(status), 1]),
                    file_index=tf.fill(tf.shape(status), file["index"]))

    def count_lost(expected, fields):
        """A chunk that did not parse (bytes that are not Examples) is lost whole: the serial numbers the next
        chunk (or the marker) starts at show how many records went with it; its first element carries them."""
        fields = dict(fields)
        serial = fields.pop("serial")
        lost = tf.concat([serial, [expected]], axis=0)[0] - expected
        first = tf.one_hot(0, tf.size(serial), dtype=tf.float32)[:, None]
        fields["counts"] += first * tf.cast(lost, tf.float32) * bad_records.one_count("malformed_record")
        return tf.concat([[expected - 1], serial], axis=0)[-1] + 1, fields

    chunks = framed.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), frame).map(parse_stage)
    return chunks.ignore_errors(log_warning=True).scan(tf.constant(0, tf.int64), count_lost).unbatch()
