"""Beam job: accuracy of a .tflite model on a large set of soft-label records.

The same per-record code as `benchmark.accuracy` (the evaluation view of `distillery.record_pixels`,
top-1/top-5 on labelled records, agreement with the teacher's top-1 on all), run as a Beam DoFn with one
interpreter per worker process: the model bytes are read once per DoFn instance in `setup()`
(through Beam FileSystems, so gs:// works on workers) and kept for every bundle. Per-record counts
are summed with CombineGlobally and written as one JSON object to `--output`, which the launcher
reads back. The local default runner is the in-process FnApiRunner (docs/decisions/004-fnapirunner-locally.md); every
other Beam option passes through after `--`.

    python -m benchmark.accuracy_pipeline_main --model=/tmp/student_int8.tflite \
        --eval='runs/demo/soft_labels/eval-*' --output=/tmp/eval_counts.json
    python -m benchmark.accuracy_pipeline_main --model=gs://b/m.tflite --eval='gs://b/eval-*' \
        --output=gs://b/eval_counts.json -- --runner=DataflowRunner --project=P --region=R
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from benchmark import accuracy
from distillery import records, tflite_model


class ScoreRecords(beam.DoFn):
    """Serialized soft-label record -> EvalCounts of that record; one interpreter per DoFn instance."""

    def __init__(self, model_path: str, num_threads: int = 1):
        self._model_path = model_path
        self._num_threads = num_threads
        self._classifier = None

    def setup(self) -> None:
        with FileSystems.open(self._model_path) as handle:
            content = handle.read()
        self._classifier = tflite_model.Classifier.from_bytes(content, self._model_path, self._num_threads)

    def process(self, serialized: bytes) -> Iterable[accuracy.EvalCounts]:
        try:
            record = records.decode(serialized)
        except ValueError as error:
            raise records.RecordError(f"{self._model_path}: evaluation record: {error}") from None
        yield accuracy.score_record(self._classifier, record)


def sum_counts(counts: Iterable[accuracy.EvalCounts]) -> accuracy.EvalCounts:
    return functools.reduce(lambda total, item: total + item, counts, accuracy.EvalCounts())


def build(pipeline: beam.Pipeline, model_path: str, pattern: str, output: str, num_threads: int = 1):
    """Adds the evaluation steps to `pipeline`; returns the PCollection with the one summed EvalCounts."""
    # An extraction summary stands for exactly the record files it lists; other entries stay globs,
    # expanded by Beam's reader (on the workers' file system, not listed here).
    patterns = [item for item, _ in records.record_sources(pattern)]
    reads = [pipeline | f"ReadRecords{index}" >> beam.io.ReadFromTFRecord(item) for index, item in enumerate(patterns)]
    serialized = reads[0] if len(reads) == 1 else tuple(reads) | "FlattenRecords" >> beam.Flatten()
    totals = (serialized
              | "ScoreRecords" >> beam.ParDo(ScoreRecords(model_path, num_threads))
              | "SumCounts" >> beam.CombineGlobally(sum_counts))
    _ = (totals
         | "ToJson" >> beam.Map(lambda counts: json.dumps(dataclasses.asdict(counts), sort_keys=True))
         | "WriteCounts" >> beam.io.WriteToText(output, shard_name_template="", num_shards=1))
    return totals


def read_counts(output: str) -> accuracy.EvalCounts:
    """The EvalCounts a finished run wrote to `output`."""
    with FileSystems.open(output) as handle:
        return accuracy.EvalCounts(**json.loads(handle.read().decode("utf-8").strip()))


def run(model_path: str, pattern: str, beam_args: Sequence[str] = (), num_threads: int = 1,
        output: str | None = None, test_pipeline: beam.Pipeline | None = None) -> accuracy.EvalCounts:
    """Runs the evaluation job and returns the summed counts.

    The model and the records' classes are checked here first (an error names the file), then the
    pipeline runs on `test_pipeline` or on a pipeline built from `beam_args` (FnApiRunner when no
    --runner is given).
    """
    content = tflite_model.read_tflite(model_path) if "://" not in model_path else FileSystems.open(model_path).read()
    classifier = tflite_model.Classifier.from_bytes(content, model_path, num_threads)
    accuracy.check_compatible(classifier, records.read_spec(pattern), pattern)
    if output is None:
        output = os.path.join(tempfile.mkdtemp(prefix="distillery_eval_"), "counts.json")
    if test_pipeline is not None:
        pipeline = test_pipeline
    else:
        options = PipelineOptions(list(beam_args))
        runner = options.view_as(StandardOptions).runner
        if runner is None:
            from apache_beam.runners.portability.fn_api_runner import FnApiRunner
            runner = FnApiRunner()
        pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline, model_path, pattern, output, num_threads)
    pipeline.run().wait_until_finish()
    return read_counts(output)
