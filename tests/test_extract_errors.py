"""Errors of distillery-extract that name the flag or file instead of a traceback: an --output or
--dead_letter that cannot be written (checked before the pipeline runs), and a corrupt TFRecord source
under --max_examples (a dead letter naming the file).

    .venv/bin/python -m pytest -q -p no:xdist tests/test_extract_errors.py
"""

from __future__ import annotations

import json

import pytest
import tensorflow as tf
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from extract_fixtures import ListSource, encode, good_items, load_fake_teacher, photo

from pipelines import extraction


def config_for(tmp_path, **overrides):
    settings = dict(source="list:test", teachers=("fake",), output=str(tmp_path / "out" / "soft"),
                    dead_letter=str(tmp_path / "out" / "dead.jsonl"), batch_size=4)
    settings.update(overrides)
    return extraction.ExtractConfig(**settings)


@pytest.mark.parametrize("flag", ["output", "dead_letter"])
def test_an_unwritable_output_fails_before_the_run_naming_the_flag(tmp_path, flag):
    (tmp_path / "a_file").write_text("in the way of a folder")
    path = str(tmp_path / "a_file" / "sub" / "soft")
    config = config_for(tmp_path, **{flag: path})
    with pytest.raises(ValueError, match=rf"--{flag}={path}: cannot write there: "):
        extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()), source=ListSource(good_items(2)),
                       teacher_loader=load_fake_teacher)


def test_missing_output_folders_are_created(tmp_path):
    config = config_for(tmp_path, output=str(tmp_path / "new" / "deeper" / "soft"),
                        dead_letter=str(tmp_path / "other" / "dead.jsonl"))
    result = extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()),
                            source=ListSource(good_items(2)), teacher_loader=load_fake_teacher)
    assert result.counters["written"] == 2 and (tmp_path / "other" / "dead.jsonl").exists()


def test_a_corrupt_tfrecord_with_max_examples_is_a_dead_letter_naming_the_file(tmp_path):
    path = tmp_path / "torn.tfrecord"
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(photo(3))]))}))
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example.SerializeToString())
    path.write_bytes(path.read_bytes()[:30])  # cut inside the first record
    config = config_for(tmp_path, source=f"tfrecord:{path}", max_examples=2, store_image_max_side=32)
    result = extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()),
                            teacher_loader=load_fake_teacher)
    with open(config.dead_letter, encoding="utf-8") as file:
        (letter,) = [json.loads(line) for line in file]
    assert result.counters["written"] == 0 and result.summary["balanced"]
    assert letter["stage"] == "read" and letter["source"] == str(path) and "truncated" in letter["reason"]
