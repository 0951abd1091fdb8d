"""One record file as a tf.data stream of examples that never raises: framing, parsing and image bytes.

`read_file` is what the trainer's input pipeline interleaves over its files (trainer/data.py). Per file:

1. the TFRecord framing (tf.data.TFRecordDataset with ignore_errors). TensorFlow's reader cannot
   resynchronize after a record whose length or data CRC is wrong (or a truncated file): it moves on to
   the next file. So a corrupt record loses the rest of its file for this pass; it is detected by adding
   up the bytes read (16 framing bytes + the data per record) against the file's size, and counted once
   as corrupt_record (trainer/bad_records.py);
2. parsing (`parse`, e.g. `distillery.records.tf_parser` and a view choice): a record that raises is
   dropped and counted as malformed_record; one with non-finite logits is kept, with its status;
3. the image bytes: the stored bytes, else the file at image/path (tf.io.read_file: local or gs://); a
   read that raises is dropped and counted as missing_image.

A stage's drops show as gaps in the serial numbers given just before it; a scan at the end of the file
turns them into counts carried by the next element of the same file (or by the end-of-file marker, an
element of status MARKER), so every bad record is counted with its file known. The image bytes are read
here, before the trainer's shuffle, for path-only records too: the shuffle buffer then holds encoded
images whichever way the records carry them.

    python -c "from trainer import record_files; print(record_files.file_sizes(['/etc/hostname']))"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
import tensorflow as tf

from distillery import records
from trainer import bad_records

FRAME_BYTES = 16  # TFRecord framing per record: length (8), its CRC (4), the data's CRC (4)
STAT_THREADS = 16

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


def read_file(file: dict, parse: ParseFunction, blank: bytes, pipelines: int = 1, pipeline_id: int = 0) -> tf.data.Dataset:
    """The examples of one record file, then its end-of-file marker when it carries counts.

    Args:
      file: {"path": string, "size": int64 bytes, "index": int32 (the file's number in the run's file list),
        "visit": int64 (how many files this pipeline opened before this one)}.
      parse: (serialized, record index in the file, visit) -> dict of tensors holding at least
        encoded_image, image_path and finite_logits (records.tf_parser's keys); it may raise.
      blank: `blank_record(spec)`, parsed in place of the end-of-file marker.
      pipelines, pipeline_id: keep only the records whose index in the file is pipeline_id modulo pipelines
        (sharding by record when there are fewer files than input pipelines).

    Returns:
      A dataset of dicts: the parse's keys except encoded_image and image_path, plus image (the encoded
      bytes), file_index, status (bad_records.GOOD, a reason's status, or MARKER) and counts ([R] float32:
      the bad records of this file met since the previous element).
    """
    framed = (tf.data.TFRecordDataset(file["path"]).ignore_errors(log_warning=True)
              .map(lambda serialized: (serialized, False))
              .concatenate(tf.data.Dataset.from_tensors((tf.constant(""), True))))

    def frame(state, item):
        consumed, index = state
        serialized, end = item
        advance = tf.cast(~end, tf.int64)
        element = {"serialized": serialized, "record_index": index, "end": end,
                   "corrupt": end & tf.not_equal(consumed, file["size"])}
        length = tf.cast(tf.strings.length(serialized), tf.int64) + FRAME_BYTES
        return (consumed + advance * length, index + advance), element

    framed = framed.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), frame)
    if pipelines > 1:
        framed = framed.filter(lambda element: element["end"] | tf.equal(element["record_index"] % pipelines,
                                                                         pipeline_id))

    def parse_stage(parse_serial, element):
        fields = dict(parse(tf.where(element["end"], tf.constant(blank), element["serialized"]),
                            element["record_index"], file["visit"]))
        finite = fields.pop("finite_logits")
        status = tf.where(element["end"], bad_records.MARKER,
                          tf.where(finite, bad_records.GOOD, bad_records.status_of("non_finite_logits")))
        corrupt = element["corrupt"] & tf.equal(element["record_index"] % pipelines, pipeline_id)
        return dict(fields, parse_serial=parse_serial, status=status, corrupt=corrupt)

    def image_stage(image_serial, fields):
        fields = dict(fields)
        encoded, path = fields.pop("encoded_image"), fields.pop("image_path")
        read = tf.equal(fields["status"], bad_records.GOOD) & tf.equal(tf.strings.length(encoded), 0)
        fields["image"] = tf.cond(read, lambda: tf.io.read_file(path), lambda: encoded)
        return dict(fields, image_serial=image_serial)

    parsed = framed.enumerate().map(parse_stage).ignore_errors(log_warning=True)
    with_images = (parsed.enumerate().map(image_stage, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .ignore_errors(log_warning=True))

    def count(state, fields):
        last_parse, last_image = state
        fields = dict(fields)
        parse_serial, image_serial = fields.pop("parse_serial"), fields.pop("image_serial")
        missing = image_serial - last_image - 1
        malformed = parse_serial - last_parse - 1 - missing
        counts = (bad_records.one_count("missing_image", missing) + bad_records.one_count("malformed_record", malformed)
                  + bad_records.one_count("corrupt_record", tf.cast(fields.pop("corrupt"), tf.float32)))
        fields.update(counts=counts, file_index=file["index"])
        return (parse_serial, image_serial), fields

    counted = with_images.scan((tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)), count)
    return counted.filter(lambda fields: tf.not_equal(fields["status"], bad_records.MARKER)
                          | (tf.reduce_sum(fields["counts"]) > 0))
