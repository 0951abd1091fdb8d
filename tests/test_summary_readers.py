"""Every reader of soft-label records given an extraction's summary reads exactly the files it lists.

One real extraction (FnApiRunner, the fake teacher, images stored) writes 6 records in 2 work units and
PREFIX.summary.json; then a stray file of 2 more records is put under the same PREFIX-*, as an older run
or another job could leave it. Each reader is run twice: on PREFIX-* it sees 8 records, on the summary
exactly the 6 the summary lists (ids compared, not only counts). Readers: the trainer's input pipeline
and evaluation (distillery-train --train/--eval), distillery-quantize --calibration, distillery-factorize
--train/--eval, distillery-benchmark --eval (in-process and Beam), distillery-inspect.
"""

import dataclasses
import json
import subprocess
import sys

import keras
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from extract_fixtures import INPUT_SIZE, NUM_CLASSES, ListSource, good_items, load_fake_teacher

from benchmark import accuracy, accuracy_pipeline
from compress import factorize_job, quantize
from distillery import records
from pipelines import extraction, inspect_records
from trainer import data, loop
from trainer.train_config import TrainConfig

EXTRACTED, STRAY = 6, 2


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("summary_readers")
    config = extraction.ExtractConfig(source="list:test", teachers=("fake",), output=str(directory / "out" / "soft"),
                                      dead_letter=str(directory / "out" / "dead.jsonl"), batch_size=4,
                                      store_image_max_side=64)
    result = extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()),
                            source=ListSource(good_items(EXTRACTED), 3), teacher_loader=load_fake_teacher,
                            save_main_session=False)
    summary = extraction.summary_path(config.output)
    listed = [shard["file"] for shard in result.summary["shards"]]
    assert len(listed) == 2 and sum(shard["records"] for shard in result.summary["shards"]) == EXTRACTED
    first = next(records.read_records(listed[0], limit=1))
    records.write_records(config.output + "-zzz.tfrecord",
                          [dataclasses.replace(first, image_id=f"stray{index}") for index in range(STRAY)])
    return {"summary": summary, "glob": config.output + "-*", "listed": listed, "directory": directory,
            "ids": sorted(f"img{index:03d}" for index in range(EXTRACTED))}


def test_the_summary_stands_for_its_files_and_a_glob_for_all_that_match(extracted):
    assert records.record_sources(extracted["summary"]) == [(path, True) for path in extracted["listed"]]
    assert records.expand_paths(extracted["summary"]) == extracted["listed"]
    assert len(records.expand_paths(extracted["glob"])) == 3
    # A summary among globs, comma-separated: in order, each entry as it is.
    assert records.expand_paths(f"{extracted['summary']},{extracted['glob']}") == (
        extracted["listed"] + records.expand_paths(extracted["glob"]))
    assert data.count_records(extracted["summary"]) == EXTRACTED
    assert data.count_records(extracted["glob"]) == EXTRACTED + STRAY


def test_training_and_its_evaluation_read_the_summary(extracted, tmp_path):
    config = TrainConfig(train_pattern=extracted["summary"], eval_pattern=extracted["summary"],
                         model_dir=str(tmp_path / "run"), student="small_cnn", width=0.25, image_size=INPUT_SIZE,
                         batch_size=2, steps=2, checkpoint_every=0, log_every=1, temperature=2.0, shuffle_buffer=8,
                         eval_batch_size=4)
    summary = loop.train(config)
    assert summary["eval_images"] == EXTRACTED  # every record is labelled; the glob would give 8
    run_config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert run_config["train_files"] == extracted["listed"]


def test_calibration_reads_the_summary(extracted):
    size = (INPUT_SIZE, INPUT_SIZE)
    assert len(quantize.calibration_images(extracted["summary"], size, steps=100)) == EXTRACTED
    assert len(quantize.calibration_images(extracted["glob"], size, steps=100)) == EXTRACTED + STRAY


def test_factorize_checks_its_record_flags_through_the_summary(extracted, tmp_path):
    model_path = str(tmp_path / "student.keras")
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3))
    keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(inputs))).save(model_path)
    config = factorize_job.JobConfig(model_path=model_path, train_pattern=extracted["summary"],
                                     eval_pattern=extracted["summary"], output_path=str(tmp_path / "out.keras"))
    factorize_job.validate(config)
    missing = tmp_path / "gone.summary.json"
    with pytest.raises(factorize_job.JobError, match=r"--eval: no extraction summary at .*gone\.summary\.json"):
        factorize_job.validate(dataclasses.replace(config, eval_pattern=str(missing)))


@pytest.fixture(scope="module")
def tflite_path(extracted):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(x)))
    path = extracted["directory"] / "student.tflite"
    path.write_bytes(quantize.convert(model, "float32"))
    return str(path)


def test_benchmark_accuracy_reads_the_summary_in_process_and_in_beam(extracted, tflite_path):
    in_process = accuracy.evaluate(tflite_path, extracted["summary"])
    assert in_process.images == in_process.labelled == EXTRACTED
    assert accuracy.evaluate(tflite_path, extracted["glob"]).images == EXTRACTED + STRAY
    for pattern, images in ((extracted["summary"], EXTRACTED), (extracted["glob"], EXTRACTED + STRAY)):
        beam_counts = accuracy_pipeline.run(tflite_path, pattern, output=str(extracted["directory"] / "counts.json"))
        assert beam_counts.images == images
    beam_counts = accuracy_pipeline.run(tflite_path, extracted["summary"])
    assert (beam_counts.images, beam_counts.top1_correct, beam_counts.teacher_agree) == (
        in_process.images, in_process.top1_correct, in_process.teacher_agree)


def test_inspect_reads_the_summary(extracted):
    output = subprocess.run([sys.executable, "-m", "pipelines.inspect_records", extracted["summary"], "--top=1"],
                            check=True, capture_output=True, text=True).stdout
    assert sorted(json.loads(line)["image_id"] for line in output.splitlines()) == extracted["ids"]
    assert len(list(inspect_records.summaries(extracted["glob"]))) == EXTRACTED + STRAY
