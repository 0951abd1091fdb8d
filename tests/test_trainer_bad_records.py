"""Bad records do not kill a run: each is skipped and counted by reason; too many, or a non-finite loss, stop it.

One record file holds, in this order: five good records (the first path-only, so that the pipeline reads
images in a step of its own and tells a missing file from an undecodable one), a record whose stored
image is garbage, a path-only record whose file is missing, a record with NaN logits, a corrupt record
(its data CRC does not match) and a good record after it, which the corruption loses. Read in order
(one file, shuffle buffer 1), the five good examples of one pass fill a batch of 5, and the bad ones met
after them ride with the next batch: one of each reason per pass.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_trainer_bad_records.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import trainer_fixtures as fixtures

from distillery import records
from trainer import bad_records, data, loop, loss_guard, record_files, students
from trainer.train_config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD_LABELS = (0, 1, 2, 3, 4)
PER_PASS = {"corrupt_record": 1, "malformed_record": 0, "non_finite_logits": 1, "missing_image": 1,
            "undecodable_image": 1}
VIEWS, TOP_K = 2, 2


def _record(index: int, encoded: bytes = b"", image_path: str = "") -> records.SoftLabelRecord:
    rng = np.random.default_rng(index)
    crops, flips = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.8, 0.9]]), np.array([False, True])
    logits = rng.normal(size=(VIEWS, fixtures.NUM_CLASSES)).astype(np.float32)
    if not encoded and not image_path:
        encoded = fixtures.png_bytes(fixtures.make_image(index))
    return records.make_record(f"img{index}", index % fixtures.NUM_CLASSES, ["t"], crops, flips, logits, TOP_K,
                               encoded_image=encoded, image_path=image_path)


def _write(path: str, items: list, corrupt: int | None = None) -> None:
    """Writes serialized records (or SoftLabelRecords); flips a byte inside record `corrupt`'s data."""
    serialized = [item if isinstance(item, bytes) else records.encode(item) for item in items]
    with tf.io.TFRecordWriter(path) as writer:
        for item in serialized:
            writer.write(item)
    if corrupt is not None:
        content = bytearray(open(path, "rb").read())
        offset = sum(16 + len(item) for item in serialized[:corrupt]) + 12 + len(serialized[corrupt]) // 2
        content[offset] ^= 0xFF
        open(path, "wb").write(bytes(content))


@pytest.fixture(scope="module")
def bad_glob(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bad")
    nan = _record(7)
    nan.logits = nan.logits.copy()
    nan.logits[1, 0] = np.nan
    first_image = directory / "img0.png"
    first_image.write_bytes(fixtures.png_bytes(fixtures.make_image(0)))
    items = [_record(0, image_path=str(first_image))] + [_record(index) for index in GOOD_LABELS[1:]] + [
        _record(5, encoded=b"this is not an image, whatever its record says"),
        _record(6, image_path=str(directory / "missing.png")),
        nan, _record(8), _record(9)]
    _write(str(directory / "train-00000-of-00001"), items, corrupt=8)
    return str(directory / "train-*")


def _config(pattern: str, model_dir, **overrides) -> TrainConfig:
    values = dict(train_pattern=pattern, model_dir=str(model_dir), student="small_cnn", width=0.25, image_size=32,
                  batch_size=5, steps=2, learning_rate=0.1, checkpoint_every=0, log_every=1, temperature=2.0,
                  shuffle_buffer=1, max_bad_fraction=0.5)
    values.update(overrides)
    return TrainConfig(**values)


def _counts(targets) -> dict:
    return dict(zip(bad_records.REASONS, targets[bad_records.SKIPPED].numpy().sum(axis=0).tolist()))


def test_the_numpy_reader_refuses_what_the_pipeline_skips(bad_glob):
    with pytest.raises(records.RecordError, match=r"train-00000-of-00001: record 7: non-finite teacher logits"):
        list(records.read_records(bad_glob))
    assert records.read_spec(bad_glob).top_k == TOP_K
    assert records.survey(bad_glob).images_stored is False  # its first record is path-only: two steps


def test_the_pipeline_skips_bad_examples_and_counts_them_by_reason_per_pass(bad_glob):
    dataset = data.make_dataset(bad_glob, 32, 5, training=True, seed=0, shuffle_buffer=1, temperature=2.0)
    batches = list(dataset.take(4))  # four passes over the file
    for index, (images, targets) in enumerate(batches):
        assert sorted(targets["labels"].numpy().tolist()) == list(GOOD_LABELS)  # the good examples only
        assert np.all(np.isfinite(targets["teacher_probabilities"].numpy())) and images.shape == (5, 32, 32, 3)
        assert _counts(targets) == (dict.fromkeys(bad_records.REASONS, 0) if index == 0 else PER_PASS)
        assert targets[bad_records.BAD_FILE].numpy()[-1] == (-1 if index == 0 else 0)


def test_a_run_over_bad_records_finishes_and_reports_them(bad_glob, tmp_path, caplog):
    caplog.set_level("WARNING", logger="absl")
    config = _config(bad_glob, tmp_path / "run")
    keras.utils.set_random_seed(config.seed)
    initial = students.build_student("small_cnn", 0.25, 32, fixtures.NUM_CLASSES).get_weights()
    student, summary = loop.train_student(config)
    assert summary["steps"] == 2 and summary["skipped"] == PER_PASS
    # One line, at the interval where the count grew: the 4 bad examples ride with step 2's batch.
    lines = [record.getMessage() for record in caplog.records if "bad example" in record.getMessage()]
    assert lines == [f"step 2: skipped 4 bad example(s) of 14 seen (corrupt_record 1, non_finite_logits 1, "
                     f"missing_image 1, undecodable_image 1); {bad_glob.replace('*', '00000-of-00001')} holds bad "
                     f"records"]
    assert json.load(open(tmp_path / "run" / "summary.json"))["skipped"] == PER_PASS
    assert all(not np.array_equal(a, b) for a, b in zip(initial, student.get_weights()))
    scalars = {}
    for event_file in (tmp_path / "run" / "logs" / "train").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    assert scalars["skipped/missing_image"] == [(1, 0.0), (2, 1.0)]
    assert scalars["skipped/corrupt_record"][-1] == (2, 1.0)


def test_more_bad_records_than_max_bad_fraction_stop_the_command_naming_the_file(bad_glob, tmp_path):
    model_dir = tmp_path / "strict"
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run(
        [sys.executable, "-m", "trainer.train", f"--train={bad_glob}", f"--model_dir={model_dir}", "--student=small_cnn",
         "--width=0.25", "--image_size=32", "--batch_size=5", "--steps=4", "--log_every=1", "--checkpoint_every=0",
         "--shuffle_buffer=1", "--max_bad_fraction=0"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    file = bad_glob.replace("*", "00000-of-00001")
    assert (f"distillery-train: error: step 2: 4 of the 14 examples seen are bad (28.5714%), more than "
            f"--max_bad_fraction=0 (corrupt_record 1, non_finite_logits 1, missing_image 1, undecodable_image 1); "
            f"{file} holds bad records") in result.stderr
    assert "Traceback" not in result.stderr and not (model_dir / "summary.json").exists()


def test_a_non_finite_loss_stops_the_run_before_it_saves(tmp_path):
    pattern = fixtures.write_tiny_records(str(tmp_path / "records"), fixtures.tiny_teacher_model(), num_files=1,
                                          per_file=8)
    model_dir = tmp_path / "diverged"
    # Step 1's loss is finite (the initial weights), its infinite update is not: caught before ckpt-1 is saved.
    config = _config(pattern, model_dir, batch_size=4, steps=6, checkpoint_every=1, log_every=3,
                     learning_rate=float("inf"), shuffle_buffer=8)
    with pytest.raises(loss_guard.NonFiniteLossError, match=r"^step 1: the weights are not finite after it"):
        loop.train(config)
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")) is None
    assert not (model_dir / "summary.json").exists() and not (model_dir / "student.keras").exists()
    # Checked at log steps only (no checkpoint before the end): the loss of step 2 is the first non-finite value.
    config = _config(pattern, tmp_path / "diverged_no_checkpoints", batch_size=4, steps=6, checkpoint_every=0,
                     log_every=3, learning_rate=float("inf"), shuffle_buffer=8)
    with pytest.raises(loss_guard.NonFiniteLossError, match=r"^step 2: the loss is nan: training diverged"):
        loop.train(config)
    assert not (tmp_path / "diverged_no_checkpoints" / "checkpoints").exists() or tf.train.latest_checkpoint(
        str(tmp_path / "diverged_no_checkpoints" / "checkpoints")) is None


def test_a_run_that_diverges_keeps_its_earlier_checkpoints_and_they_are_finite(tmp_path):
    pattern = fixtures.write_tiny_records(str(tmp_path / "records"), fixtures.tiny_teacher_model(), num_files=1,
                                          per_file=8)
    model_dir = tmp_path / "run"
    good = _config(pattern, model_dir, batch_size=4, steps=2, checkpoint_every=1, log_every=1, shuffle_buffer=8)
    loop.train(good)
    summary = (model_dir / "summary.json").read_bytes()
    # The same run continued with a learning rate that may change on a resume (trainer/resume.py), here inf.
    diverging = _config(pattern, model_dir, batch_size=4, steps=6, checkpoint_every=1, log_every=1, shuffle_buffer=8,
                        learning_rate=float("inf"))
    with pytest.raises(loss_guard.NonFiniteLossError, match=r"^step 3: the weights are not finite after it"):
        loop.train(diverging)
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert latest.endswith("ckpt-2")
    reader = tf.train.load_checkpoint(latest)
    # The student's weights are stored once, under the optimizer's references to them; its slots beside them.
    saved = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    floating = [value for value in saved if np.issubdtype(np.asarray(value).dtype, np.floating)]
    assert len(floating) >= 8
    assert all(np.all(np.isfinite(value)) for value in floating)
    assert (model_dir / "summary.json").read_bytes() == summary  # the last good output stays


def test_records_of_another_version_truncated_files_and_images_that_fail_to_decode_are_counted(tmp_path):
    """A record of another format version, a JPEG whose header passes but whose data does not decode (dropped
    by ignore_errors after the shuffle) and a file cut short in its last record."""
    jpeg = tf.io.encode_jpeg(fixtures.make_image(3)).numpy()
    other_version = tf.train.Example.FromString(records.encode(_record(5)))
    other_version.features.feature["distillery/version"].int64_list.value[0] = 99
    items = [_record(0), _record(1), _record(2), other_version.SerializeToString(), _record(3, encoded=jpeg[:60]),
             _record(4)]
    _write(str(tmp_path / "r-0"), items)
    content = open(tmp_path / "r-0", "rb").read()
    open(tmp_path / "r-0", "wb").write(content[:-10])
    pattern = str(tmp_path / "r-*")
    assert [int(targets["labels"][0]) for _, targets in data.make_dataset(pattern, 32, 1, training=False)] == [0, 1, 2]
    per_pass = dict(PER_PASS, corrupt_record=1, malformed_record=1, non_finite_logits=0, missing_image=0,
                    undecodable_image=1)
    training = data.make_dataset(pattern, 32, 3, training=True, seed=0, shuffle_buffer=1)
    for index, (_, targets) in enumerate(training.take(3)):
        assert sorted(targets["labels"].numpy().tolist()) == [0, 1, 2]
        assert _counts(targets) == (dict.fromkeys(bad_records.REASONS, 0) if index == 0 else per_pass)
        assert targets[bad_records.BAD_FILE].numpy()[-1] == (-1 if index == 0 else 0)


def test_records_that_store_their_images_are_read_and_decoded_in_one_step(tmp_path):
    """When every file's first record stores its image, read and decode are one step: a gap there counts as
    undecodable_image, a path-only record's missing file among stored ones too (data.make_dataset)."""
    jpeg = tf.io.encode_jpeg(fixtures.make_image(3)).numpy()
    items = [_record(0), _record(1), _record(2, image_path=str(tmp_path / "missing.png")),
             _record(3, encoded=jpeg[:60]), _record(4)]
    _write(str(tmp_path / "s-0"), items)
    pattern = str(tmp_path / "s-*")
    found = records.survey(pattern)
    assert (found.spec, found.images_stored) == (records.read_spec(pattern), True)
    training = data.make_dataset(pattern, 32, 3, training=True, seed=0, shuffle_buffer=1)
    per_pass = dict.fromkeys(bad_records.REASONS, 0) | {"undecodable_image": 2}
    for _, targets in training.take(3):  # the bad records 2 and 3 ride with record 4, in every pass
        assert sorted(targets["labels"].numpy().tolist()) == [0, 1, 4]
        assert _counts(targets) == per_pass
    # The same records read in two steps (as when a file's first record is path-only) tell the two apart.
    two_steps = data.make_dataset(pattern, 32, 3, training=True, seed=0, shuffle_buffer=1, images_stored=False)
    assert [_counts(targets) for _, targets in two_steps.take(2)] == [dict(per_pass, missing_image=1,
                                                                          undecodable_image=1)] * 2


def test_bytes_that_are_not_examples_lose_their_chunk(tmp_path):
    """A record that passes its CRC but is not a tf.train.Example fails the parse of its chunk of
    record_files.CHUNK records: the chunk is lost, its records counted as malformed_record."""
    first_chunk = [_record(index) for index in range(record_files.CHUNK)]
    _write(str(tmp_path / "r-0"), first_chunk + [_record(100), b"\x08\x96\x01 not an example", _record(101)])
    training = data.make_dataset(str(tmp_path / "r-*"), 32, record_files.CHUNK, training=True, seed=0, shuffle_buffer=1)
    for index, (_, targets) in enumerate(training.take(3)):
        assert sorted(targets["labels"].numpy().tolist()) == sorted(item.label for item in first_chunk)
        expected = dict.fromkeys(bad_records.REASONS, 0)
        assert _counts(targets) == (expected if index == 0 else dict(expected, malformed_record=3))


def test_path_only_records_decode_in_the_graph_without_python(tmp_path):
    """The training pipeline's graph (and every function in it) holds no py_function / numpy_function op,
    and reads and decodes path-only records (local files through tf.io.read_file)."""
    items = []
    for index in range(4):
        path = tmp_path / f"photo{index}.png"
        path.write_bytes(fixtures.png_bytes(fixtures.make_image(index)))
        items.append(_record(index, image_path=str(path)))
    _write(str(tmp_path / "paths-0"), items)
    dataset = data.make_dataset(str(tmp_path / "paths-*"), 32, 4, training=True, seed=0, shuffle_buffer=4,
                                temperature=2.0, teacher_image_size=(24, 24), repeat=False)
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())  # noqa: SLF001 (tf.data's own)
    op_types = {node.op for node in graph.node}
    op_types |= {node.op for function in graph.library.function for node in function.node_def}
    assert not op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}, sorted(op_types)
    assert {"ReadFile", "DecodeJpeg", "DecodePng", "DecodeImage", "ParseExampleV2", "TFRecordDataset"} <= op_types
    images, targets = next(iter(dataset))
    assert sorted(targets["labels"].numpy().tolist()) == [0, 1, 2, 3] and float(images.numpy().std()) > 10


def test_fewer_files_than_input_pipelines_shard_by_record(tmp_path):
    """One file, two input pipelines: each keeps every other record (also through a chunk boundary and
    past bad records), the two together every good record once."""
    items = [_record(index) for index in range(record_files.CHUNK + 6)]
    items[3] = _record(3, encoded=b"garbage")  # kept by pipeline 1, which skips it
    _write(str(tmp_path / "one-0"), items)
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        dataset = data.make_dataset(str(tmp_path / "one-*"), 32, 10, training=False, input_context=context)
        seen.append([int(label) for _, targets in dataset for label in targets["labels"].numpy()])
    expected = [item.label for item in items]
    assert seen[0] == expected[0::2] and seen[1] == expected[1:3:2] + expected[5::2]
