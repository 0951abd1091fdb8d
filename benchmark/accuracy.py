"""Accuracy of a .tflite classifier on soft-label records: top-1/top-5 and teacher agreement.

Each record's image is decoded and its evaluation view (the centre crop, `distillery.views.eval_view`,
what the trainer evaluates on) resized to the model's input size, both by `distillery.record_pixels`. Records
with a hard label (label >= 0) count towards top-1 and top-5; every record counts towards agreement
with the teacher's top-1 class of stored view 0 (the only accuracy an unlabeled set such as Open Images
has): extract evaluation sets with --views=1, so that view 0 is that same centre crop.
The invoke time of every image is summed: that is the runtime of the LPIRC score.

For large evaluation sets `benchmark.accuracy_pipeline` runs the same counts in Beam, one record at a time
(`score_record`); the in-process pass batches the views of 64 records per graph call.

    python -m benchmark.accuracy /tmp/student_int8.tflite 'runs/demo/soft_labels/eval-*'
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from distillery import record_pixels, records, tflite_model


@dataclasses.dataclass
class EvalCounts:
    """Counts that add up across shards and workers.

    Attributes:
      images: records evaluated (T of the LPIRC score).
      labelled: records with a hard label.
      top1_correct, top5_correct: among the labelled.
      teacher_agree: records whose predicted class is the teacher's top-1 class of view 0.
      runtime_ms: summed invoke time of all images.
      undecodable: records whose image did not decode; they count in `images` (T) and as wrong, so a
        broken evaluation set cannot raise the accuracy or the LPIRC score.
    """

    images: int = 0
    labelled: int = 0
    top1_correct: int = 0
    top5_correct: int = 0
    teacher_agree: int = 0
    runtime_ms: float = 0.0
    undecodable: int = 0

    def __add__(self, other: EvalCounts) -> EvalCounts:
        return EvalCounts(*(getattr(self, field.name) + getattr(other, field.name)
                            for field in dataclasses.fields(self)))

    @property
    def top1(self) -> float | None:
        return self.top1_correct / self.labelled if self.labelled else None

    @property
    def top5(self) -> float | None:
        return self.top5_correct / self.labelled if self.labelled else None

    @property
    def teacher_agreement(self) -> float | None:
        return self.teacher_agree / self.images if self.images else None

    @property
    def accuracy(self) -> float | None:
        """The accuracy the score uses: top-1 on labels, else agreement with the teacher."""
        return self.top1 if self.labelled else self.teacher_agreement


def teacher_top1(record: records.SoftLabelRecord) -> int:
    """The teacher's top-1 class of view 0 (stored classes are best first; full logits in class order)."""
    return int(record.class_ids[0][int(np.argmax(record.logits[0]))])


def check_compatible(classifier: tflite_model.Classifier, spec: records.RecordSpec, records_name: str) -> None:
    """Raises ModelFileError naming the model and the records when their classes or channels differ."""
    if classifier.num_classes != spec.num_classes:
        raise tflite_model.ModelFileError(
            f"{classifier.name}: outputs {classifier.num_classes} classes but the records {records_name} "
            f"hold {spec.num_classes} classes")
    if classifier.channels not in (1, 3):
        raise tflite_model.ModelFileError(
            f"{classifier.name}: input has {classifier.channels} channels; the records {records_name} hold RGB images")


def _eval_pixels(record: records.SoftLabelRecord, classifier: tflite_model.Classifier) -> np.ndarray | None:
    """The record's evaluation view at the classifier's input, or None when its image does not decode."""
    rgb = record_pixels.decode_or_none(record)
    return None if rgb is None else record_pixels.eval_views([rgb], classifier.input_size, classifier.channels)[0]


def score_pixels(classifier: tflite_model.Classifier, record: records.SoftLabelRecord, pixels: np.ndarray | None,
                 clock: Callable[[], float] = time.perf_counter) -> EvalCounts:
    """The counts of one record given its evaluation view (None: undecodable, counted as wrong)."""
    if pixels is None:
        return EvalCounts(images=1, labelled=int(record.label >= 0), undecodable=1)
    scores, elapsed_ms = classifier.predict(pixels, clock)
    top5 = np.argsort(-scores, kind="stable")[:5]
    counts = EvalCounts(images=1, runtime_ms=elapsed_ms, teacher_agree=int(top5[0] == teacher_top1(record)))
    if record.label >= 0:
        counts.labelled = 1
        counts.top1_correct = int(top5[0] == record.label)
        counts.top5_correct = int(record.label in top5)
    return counts


def score_record(classifier: tflite_model.Classifier, record: records.SoftLabelRecord,
                 clock: Callable[[], float] = time.perf_counter) -> EvalCounts:
    """The counts of one record (one image, its centre crop)."""
    return score_pixels(classifier, record, _eval_pixels(record, classifier), clock)


def _chunks(items: Iterable[records.SoftLabelRecord], size: int) -> Iterable[list[records.SoftLabelRecord]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def evaluate_records_many(classifiers: Mapping[str, tflite_model.Classifier], items: Iterable[records.SoftLabelRecord],
                          clock: Callable[[], float] = time.perf_counter,
                          log_every: int = 1000, chunk_size: int = 64) -> dict[str, EvalCounts]:
    """`evaluate_records` for several models in one pass over the records: each record is read and decoded
    once, the evaluation views of `chunk_size` records at a time are made in one graph call per distinct
    model input (size, channels) and image shape (`record_pixels.eval_views`: the same pixels as one call per
    image; 2.8-3.5x faster over 2,000 demo test records x 5 models), then every model runs on each image, one
    image per invoke (the timed runtime of the LPIRC score).

    Returns:
      {name: EvalCounts} in the order of `classifiers`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    totals = {name: EvalCounts() for name in classifiers}
    inputs = {(classifier.input_size, classifier.channels) for classifier in classifiers.values()}
    start, count = time.perf_counter(), 0
    for chunk in _chunks(items, chunk_size):
        decoded = [record_pixels.decode_or_none(record) for record in chunk]
        decodable = [index for index, rgb in enumerate(decoded) if rgb is not None]
        views_by_input: dict[tuple, list[np.ndarray | None]] = {}
        for size, channels in inputs:
            pixels = record_pixels.eval_views([decoded[index] for index in decodable], size, channels)
            views_by_input[(size, channels)] = [None] * len(chunk)
            for index, view in zip(decodable, pixels):
                views_by_input[(size, channels)][index] = view
        for position, record in enumerate(chunk):
            for name, classifier in classifiers.items():
                pixels = views_by_input[(classifier.input_size, classifier.channels)][position]
                totals[name] = totals[name] + score_pixels(classifier, record, pixels, clock)
            count += 1
            if log_every and count % log_every == 0:
                logging.info("evaluated %d images x %d model(s), %.1f images/s", count, len(classifiers),
                             count / max(time.perf_counter() - start, 1e-9))
    return totals


def evaluate_records(classifier: tflite_model.Classifier, items: Iterable[records.SoftLabelRecord],
                     clock: Callable[[], float] = time.perf_counter, log_every: int = 1000) -> EvalCounts:
    """The counts of one model over records (`evaluate_records_many` with one model), logging images/s
    every `log_every` images."""
    return evaluate_records_many({classifier.name: classifier}, items, clock, log_every)[classifier.name]


def evaluate(model_path: str, pattern: str, limit: int | None = None, num_threads: int = 1,
             clock: Callable[[], float] = time.perf_counter) -> EvalCounts:
    """Top-1/top-5/teacher agreement of the .tflite file at `model_path` on the records of `pattern`.

    Raises:
      ModelFileError: naming the model when it is not TFLite or does not fit the records.
      FileNotFoundError, records.RecordError: naming the records.
    """
    classifier = tflite_model.Classifier.from_file(model_path, num_threads)
    check_compatible(classifier, records.read_spec(pattern), pattern)
    return evaluate_records(classifier, records.read_records(pattern, limit=limit), clock)


def main(argv: Sequence[str]) -> None:
    """`python -m benchmark.accuracy MODEL.tflite GLOB`."""
    logging.basicConfig(level=logging.INFO)
    counts = evaluate(argv[1], argv[2])
    print(f"{argv[1]}: {counts.images} images, top-1 {counts.top1}, top-5 {counts.top5}, "
          f"teacher agreement {counts.teacher_agreement}, runtime {counts.runtime_ms:.1f} ms")


if __name__ == "__main__":
    main(sys.argv)
