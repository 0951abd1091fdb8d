"""The LiteRT teacher runtime (--teacher_runtime): records written with litert agree with tf.

- the converted teacher (a tiny .keras file, an ensemble of it and a SavedModel) gives TensorFlow's
  logits through predict (fixed batch, padding, splitting, resizing) and __call__ in a tf.function;
- the job on the same views with tf and with litert: the same top-1 on every view, logits within 1e-3,
  and the summary names the runtime the workers ran; auto resolves to litert without a GPU;
- a teacher that does not convert fails before the pipeline, naming itself and --teacher_runtime=tf;
- the built-in MobileNetV2 over the bundled photos with both runtimes (the real case).

    .venv/bin/python -m pytest -q -p no:xdist tests/test_extract_litert.py
"""

import json
import logging
import os
import pickle
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from extract_fixtures import INPUT_SIZE, NUM_CLASSES, encode, photo, tiny_keras_teacher

from distillery import cpus, litert_teacher, records, sample_photos, teachers
from pipelines import extraction, teacher_inference


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny .keras teacher and a SavedModel of the same architecture with other weights."""
    directory = tmp_path_factory.mktemp("teachers")
    keras_path = str(directory / "tiny.keras")
    model = tiny_keras_teacher(keras_path)
    model.set_weights([weight * 0.5 + 0.01 for weight in model.get_weights()])
    saved_model_path = str(directory / "other_saved_model")
    model.export(saved_model_path, verbose=False)
    return keras_path, saved_model_path


def _photos_folder(directory, count=6):
    folder = directory / "photos" / "things"
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"photo{index}.png").write_bytes(encode(photo(40 + index, 40 + 8 * index, 56)))
    return directory / "photos"


def _run(directory, source, specs, runtime, **overrides):
    settings = dict(source=source, teachers=tuple(specs), output=str(directory / "soft"),
                    dead_letter=str(directory / "dead.jsonl"), teacher_runtime=runtime, batch_size=4, views=2, top_k=0)
    settings.update(overrides)
    config = extraction.ExtractConfig(**settings)
    result = extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()), save_main_session=False)
    written = {record.image_id: record for record in records.read_records(config.output + "-*")}
    return result.summary, written


def _assert_same_labels(tf_records, litert_records, atol):
    assert sorted(tf_records) == sorted(litert_records) and tf_records
    for image_id, expected in tf_records.items():
        got = litert_records[image_id]
        np.testing.assert_array_equal(got.crops, expected.crops)  # the same views
        np.testing.assert_array_equal(got.flips, expected.flips)
        for view in range(len(expected.crops)):
            expected_top = expected.class_ids[view, int(np.argmax(expected.logits[view]))]
            assert got.class_ids[view, int(np.argmax(got.logits[view]))] == expected_top, (image_id, view)
        # Compared class by class: with top_k < C each side stores its own top k.
        expected_logits = {(view, int(cls)): value for view in range(len(expected.crops))
                           for cls, value in zip(expected.class_ids[view], expected.logits[view])}
        shared = [(view, int(cls), value) for view in range(len(got.crops))
                  for cls, value in zip(got.class_ids[view], got.logits[view]) if (view, int(cls)) in expected_logits]
        assert shared
        np.testing.assert_allclose([value for _, _, value in shared],
                                   [expected_logits[(view, cls)] for view, cls, _ in shared], atol=atol, rtol=0)


def test_resolve_runtime_auto_follows_the_gpus():
    assert litert_teacher.resolve_runtime("auto", gpu_count=0) == "litert"
    assert litert_teacher.resolve_runtime("auto", gpu_count=1) == "tf"
    assert litert_teacher.resolve_runtime("tf", gpu_count=0) == "tf"
    assert litert_teacher.resolve_runtime("litert", gpu_count=2) == "litert"
    with pytest.raises(ValueError, match="--teacher_runtime"):
        litert_teacher.resolve_runtime("xla")


def test_threads_per_process_share_the_machine_among_its_worker_processes():
    assert litert_teacher.threads_per_process(3, 2, 8) == 3  # --teacher_threads wins
    assert litert_teacher.threads_per_process(0, 1, 8) == 8  # one process: every CPU
    assert litert_teacher.threads_per_process(0, 2, 8) == 4  # the local multi_processing runner's two workers
    assert litert_teacher.threads_per_process(0, 3, 8) == 2
    assert litert_teacher.threads_per_process(0, 16, 8) == 1  # more processes than CPUs: still one thread
    assert litert_teacher.threads_per_process(0, 0, 8) == 1  # one process per CPU (Dataflow)


def test_the_converted_teacher_gives_tensorflows_logits(model_files):
    keras_path, saved_model_path = model_files
    for specs in ([keras_path], [keras_path, saved_model_path]):
        teacher = teachers.load_teachers(specs)
        converted = litert_teacher.LiteRTTeacher.from_teacher(teacher, batch_size=4, num_threads=2)
        assert (converted.names, converted.input_size, converted.num_classes) == (
            teacher.names, teacher.input_size, teacher.num_classes)
        assert converted.runtime == "litert" and converted.batch_size == 4
        views = np.random.default_rng(3).uniform(0, 255, (10, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
        expected = teacher.predict(views, batch_size=4)
        got = converted.predict(views, batch_size=4)  # 4 + 4 + 2 padded to 4
        assert got.shape == (10, NUM_CLASSES) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert converted.predict(views[:0], batch_size=4).shape == (0, NUM_CLASSES)
        with pytest.raises(ValueError, match="compiled batch 4"):
            converted.predict(views, batch_size=8)
        traced = tf.function(converted.__call__)(tf.constant(views[:3]))  # traceable, as the Teacher contract says
        np.testing.assert_allclose(traced.numpy(), expected[:3], atol=1e-4)
        larger = tf.image.resize(views[:2], (48, 48)).numpy()  # resized to the input size first, as TF does
        np.testing.assert_allclose(converted.predict(larger, batch_size=4), teacher.predict(larger, batch_size=4),
                                   atol=1e-4)


def test_worker_processes_per_machine_follow_the_runner():
    processes = extraction.worker_processes_per_machine
    assert processes([]) == 1  # the in-process FnApiRunner
    assert processes(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]) == 2
    assert processes(["--direct_num_workers=0", "--direct_running_mode=multi_processing"]) == 0  # one per CPU
    assert processes(["--direct_num_workers=2", "--direct_running_mode=multi_threading"]) == 1  # threads share one
    assert processes(["--runner=DataflowRunner"]) == 0  # Dataflow: one SDK process per vCPU
    assert processes(["--runner=DataflowRunner", "--experiments=a,no_use_multiple_sdk_containers"]) == 1
    assert processes(["--runner=PortableRunner"]) == 1  # --sdk_worker_parallelism's default
    assert processes(["--runner=PortableRunner", "--sdk_worker_parallelism=3"]) == 3
    # Runners named as Beam accepts them: any case, with or without "Runner", or by class path.
    assert processes(["--runner=dataflow"]) == processes(["--runner=Dataflow"]) == 0
    assert processes(["--runner=apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"]) == 0
    assert processes(["--runner=flink", "--sdk_worker_parallelism=2"]) == 2
    assert processes(["--runner=portable", "--sdk_worker_parallelism=4"]) == 4
    assert processes(["--runner=direct", "--direct_num_workers=3", "--direct_running_mode=multi_processing"]) == 3
    assert processes(["--runner=DataflowRunner", "--experiments=a", "--experiments=no_use_multiple_sdk_containers"]) == 1
    assert processes(["--runner=DataflowRunner", "--experiment=no_use_multiple_sdk_containers"]) == 1


def test_records_with_litert_agree_with_tf_for_a_keras_teacher_and_an_ensemble(tmp_path, model_files):
    keras_path, saved_model_path = model_files
    source = f"folder:{_photos_folder(tmp_path)}"
    for name, specs in (("one", [keras_path]), ("ensemble", [keras_path, saved_model_path])):
        tf_summary, tf_records = _run(tmp_path / name / "tf", source, specs, "tf")
        litert_summary, litert_records = _run(tmp_path / name / "litert", source, specs, "litert")
        assert (tf_summary["teacher_runtime"], litert_summary["teacher_runtime"]) == ("tf", "litert")
        assert litert_summary["counters"]["written"] == tf_summary["counters"]["written"] == 6
        _assert_same_labels(tf_records, litert_records, atol=1e-4)
        again_summary, _ = _run(tmp_path / name / "litert_again", source, specs, "litert")
        first, again = (sorted(os.listdir(tmp_path / name / run)) for run in ("litert", "litert_again"))
        records_files = [file for file in first if file.startswith("soft-")]
        assert records_files and records_files == [file for file in again if file.startswith("soft-")]
        for file in records_files:  # a rerun on one runtime writes the same bytes
            assert (tmp_path / name / "litert" / file).read_bytes() == (tmp_path / name / "litert_again" / file).read_bytes()


def test_auto_is_litert_on_a_machine_without_a_gpu(tmp_path, model_files):
    keras_path, _ = model_files
    summary, written = _run(tmp_path, f"folder:{_photos_folder(tmp_path)}", [keras_path], "auto")
    assert litert_teacher.visible_gpus() == 0, "this test describes a CPU-only machine"
    assert summary["teacher_runtime"] == "litert" and len(written) == 6
    assert 0 < summary["working_seconds"] <= summary["seconds"]  # in-process: the launcher's teacher is reused
    saved = json.loads((tmp_path / "soft.summary.json").read_text())
    assert saved["teacher_runtime"] == "litert"


def test_the_loader_is_picklable_and_its_tag_keeps_runtimes_and_batches_apart(model_files):
    keras_path, _ = model_files
    loader = teacher_inference.TeacherLoader((keras_path,), runtime="litert", batch_size=8)
    assert pickle.loads(pickle.dumps(loader)) == loader
    tags = {teacher_inference.TeacherLoader((keras_path,), runtime=runtime, batch_size=batch).tag
            for runtime in litert_teacher.RUNTIMES for batch in (8, 16)}
    assert len(tags) == 6
    teacher = loader()
    assert teacher.runtime == "litert" and teacher.batch_size == 8 and teacher_inference.runtime_of(teacher) == "litert"
    assert teacher_inference.runtime_of(teacher_inference.TeacherLoader((keras_path,), runtime="tf")()) == "tf"
    assert teacher.num_threads == cpus.available_cpus()  # one process (the default): every CPU it may use
    per_cpu = teacher_inference.TeacherLoader((keras_path,), runtime="litert", batch_size=8, processes_per_machine=0)
    assert per_cpu.tag != loader.tag and per_cpu().num_threads == 1  # one process per CPU (Dataflow)


def test_an_ensemble_whose_members_differ_in_input_size_runs_under_litert_like_tf(tmp_path, model_files):
    keras_path, _ = model_files
    inputs = keras.Input((48, 48, 3))  # another input size: the ensemble resizes for it (antialiased)
    outputs = keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(inputs))
    other_size = str(tmp_path / "other_size.keras")
    keras.Model(inputs, outputs).save(other_size)
    source = f"folder:{_photos_folder(tmp_path)}"
    tf_summary, tf_written = _run(tmp_path / "tf", source, [keras_path, other_size], "tf")
    litert_summary, litert_written = _run(tmp_path / "litert", source, [keras_path, other_size], "litert")
    assert tf_summary["teacher_runtime"] == "tf" and litert_summary["teacher_runtime"] == "litert"
    assert len(litert_written) == 6
    _assert_same_labels(tf_written, litert_written, atol=1e-3)


def test_a_teacher_that_does_not_convert_fails_before_the_pipeline_naming_it(tmp_path):
    inputs = keras.Input((32, 32, 3))  # an antialiased resize inside the model: no builtin TFLite kernel
    resized = keras.layers.Resizing(16, 16, antialias=True)(inputs)
    outputs = keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(resized))
    resizing = str(tmp_path / "resizing.keras")
    keras.Model(inputs, outputs).save(resizing)
    source = f"folder:{_photos_folder(tmp_path)}"
    with pytest.raises(ValueError) as raised:
        _run(tmp_path / "litert", source, [resizing], "litert")
    message = str(raised.value)
    assert "teacher resizing.keras: cannot run under LiteRT" in message
    assert "--teacher_runtime=tf" in message and "ScaleAndTranslate" in message
    assert not (tmp_path / "litert" / "soft.summary.json").exists()
    summary, written = _run(tmp_path / "tf", source, [resizing], "tf")  # what the message suggests
    assert summary["teacher_runtime"] == "tf" and len(written) == 6


def test_resume_refuses_another_runtime(tmp_path, model_files):
    keras_path, _ = model_files
    source = f"folder:{_photos_folder(tmp_path)}"
    _run(tmp_path, source, [keras_path], "tf")
    with pytest.raises(ValueError, match=r"--teacher_runtime: 'tf', 'litert'"):
        _run(tmp_path, source, [keras_path], "litert", resume=True)


def test_the_builtin_teacher_on_the_bundled_photos_labels_alike_with_both_runtimes(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_photos.photo_paths().values():
        shutil.copy(path, folder / os.path.basename(path))
    assert len(os.listdir(folder)) >= 8
    specs = ["builtin:mobilenet_v2_imagenet"]
    tf_summary, tf_records = _run(tmp_path / "tf", f"glob:{folder}/*", specs, "tf", views=3, top_k=10, seed=1,
                                  batch_size=8)
    litert_summary, litert_records = _run(tmp_path / "litert", f"glob:{folder}/*", specs, "litert", views=3,
                                          top_k=10, seed=1, batch_size=8)
    assert (tf_summary["teacher_runtime"], litert_summary["teacher_runtime"]) == ("tf", "litert")
    assert len(litert_records) == len(os.listdir(folder))
    _assert_same_labels(tf_records, litert_records, atol=1e-3)


def test_conversion_leaves_the_absl_logger_level_alone(model_files):
    # In a Beam worker absl's flags are never parsed; TensorFlow's SavedModel export (inside the
    # converter) used to leave the absl logger at WARNING there, hiding the workers' progress lines.
    absl_logger = logging.getLogger("absl")
    before = absl_logger.level
    absl_logger.setLevel(logging.NOTSET)
    try:
        litert_teacher.LiteRTTeacher.from_teacher(teachers.load_teachers([model_files[0]]), batch_size=2)
        assert absl_logger.level == logging.NOTSET
    finally:
        absl_logger.setLevel(before)
