"""benchmark.accuracy and its Beam job: counts equal a direct computation; bad models fail naming the file."""

from __future__ import annotations

import io

import apache_beam as beam
import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from PIL import Image

from benchmark import accuracy, accuracy_pipeline
from compress import quantize
from distillery import record_pixels, records, tflite_model, views

SIDE, CLASSES, COUNT = 24, 10, 24


def _model(classes: int = CLASSES) -> keras.Model:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Float32 and int8 models, and a record file: even images labelled, odd ones unlabeled, 2 views."""
    directory = tmp_path_factory.mktemp("accuracy")
    rng = np.random.default_rng(5)
    items = []
    for index in range(COUNT):
        image = rng.integers(0, 256, (30 + index % 3, 36, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        crops = np.array([[0.1, 0.05, 0.9, 0.95], [0.0, 0.0, 0.5, 0.5]])
        teacher_logits = rng.normal(size=(2, CLASSES)).astype(np.float32)
        items.append(records.make_record(f"img{index}", index % CLASSES if index % 2 == 0 else -1, ["t"], crops,
                                         np.array([index % 4 == 0, False]), teacher_logits, 3,
                                         encoded_image=buffer.getvalue()))
    record_path = str(directory / "eval-00000.tfrecord")
    records.write_records(record_path, items)
    model = _model()
    calibration = [rng.uniform(0, 255, (1, SIDE, SIDE, 3)).astype(np.float32) for _ in range(4)]
    paths = {}
    for mode, content in (("float32", quantize.convert(model, "float32")),
                          ("int8", quantize.convert(model, "int8", calibration))):
        paths[mode] = str(directory / f"model_{mode}.tflite")
        with open(paths[mode], "wb") as handle:
            handle.write(content)
    return {"records": record_path, "items": records.read_records(record_path), "paths": paths,
            "directory": directory}


def _expected(path: str, pattern: str) -> dict:
    """The counts computed directly: crop the centre, run the interpreter, compare by hand."""
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    detail, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    counts = {"images": 0, "labelled": 0, "top1_correct": 0, "top5_correct": 0, "teacher_agree": 0}
    for record in records.read_records(pattern):
        image = np.asarray(Image.open(io.BytesIO(record.encoded_image)).convert("RGB"))
        centre = views.centre_crop(*image.shape[:2]).astype(np.float32)
        pixels = views.crop_view(image, centre, False, SIDE).numpy()
        if detail["dtype"] == np.uint8:
            assert detail["quantization"] == (1.0, 0)
            pixels = np.round(pixels)
        interpreter.set_tensor(detail["index"], pixels[None].astype(detail["dtype"]))
        interpreter.invoke()
        scores = interpreter.get_tensor(output["index"])[0].astype(np.float64)
        ranked = sorted(range(CLASSES), key=lambda c: (-scores[c], c))
        teacher = int(record.class_ids[0][0])  # top-k stored best first
        counts["images"] += 1
        counts["teacher_agree"] += ranked[0] == teacher
        if record.label >= 0:
            counts["labelled"] += 1
            counts["top1_correct"] += ranked[0] == record.label
            counts["top5_correct"] += record.label in ranked[:5]
    return counts


def _as_dict(counts: accuracy.EvalCounts) -> dict:
    return {key: getattr(counts, key) for key in ("images", "labelled", "top1_correct", "top5_correct", "teacher_agree")}


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_evaluate_equals_direct_computation(setup, mode):
    counts = accuracy.evaluate(setup["paths"][mode], setup["records"])
    expected = _expected(setup["paths"][mode], setup["records"])
    assert _as_dict(counts) == expected
    assert counts.images == COUNT and counts.labelled == COUNT // 2
    assert counts.top1 == pytest.approx(expected["top1_correct"] / expected["labelled"])
    assert counts.top5 == pytest.approx(expected["top5_correct"] / expected["labelled"])
    assert counts.teacher_agreement == pytest.approx(expected["teacher_agree"] / COUNT)
    assert counts.runtime_ms > 0
    assert counts.top5_correct >= counts.top1_correct


def test_one_pass_over_many_models_equals_one_model_at_a_time(setup):
    """distillery-benchmark evaluates all its models in one pass; a model of another input size gets its
    own crop of each image, and every model's counts equal its own evaluation."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    other = keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(x)))
    other_path = str(setup["directory"] / "model_16.tflite")
    with open(other_path, "wb") as handle:
        handle.write(quantize.convert(other, "float32"))
    paths = [setup["paths"]["float32"], setup["paths"]["int8"], other_path]
    classifiers = {path: tflite_model.Classifier.from_file(path) for path in paths}
    together = accuracy.evaluate_records_many(classifiers, records.read_records(setup["records"]))
    assert list(together) == paths
    for path in paths:
        alone = accuracy.evaluate(path, setup["records"])
        assert _as_dict(together[path]) == _as_dict(alone)
        assert together[path].images == COUNT and together[path].runtime_ms > 0
    assert classifiers[other_path].input_size == (16, 16)


def test_teacher_top1_reads_view_0():
    record = records.make_record("a", -1, ["t"], np.array([[0, 0, 1, 1], [0, 0, .5, .5]]), np.zeros(2, bool),
                                 np.array([[0, 0, 3, 0], [9, 0, 0, 0]], np.float32), 2)
    assert accuracy.teacher_top1(record) == 2
    full = records.make_record("b", -1, ["t"], np.array([[0, 0, 1, 1]]), np.zeros(1, bool),
                               np.array([[0, 4, 3, 0]], np.float32), 4)
    assert accuracy.teacher_top1(full) == 1


def test_beam_job_equals_in_process(setup):
    expected = accuracy.evaluate(setup["paths"]["int8"], setup["records"])
    output = str(setup["directory"] / "beam_counts.json")
    counts = accuracy_pipeline.run(setup["paths"]["int8"], setup["records"], output=output,
                                   test_pipeline=beam.Pipeline(runner=FnApiRunner()))
    assert _as_dict(counts) == _as_dict(expected)
    assert counts.runtime_ms > 0
    assert accuracy_pipeline.read_counts(output) == counts


def test_bad_model_files_are_named(setup, tmp_path):
    good = open(setup["paths"]["float32"], "rb").read()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(good[: len(good) // 3])
    png = tmp_path / "photo.tflite"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, "PNG")
    png.write_bytes(buffer.getvalue())
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(good[:8] + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    for path in (truncated, png, garbage, tmp_path / "missing.tflite"):
        with pytest.raises(tflite_model.ModelFileError, match=path.name):
            accuracy.evaluate(str(path), setup["records"])


def test_model_that_does_not_fit_the_records_is_named(setup, tmp_path):
    path = tmp_path / "seven_classes.tflite"
    path.write_bytes(quantize.convert(_model(classes=7), "float32"))
    with pytest.raises(tflite_model.ModelFileError, match=r"seven_classes.tflite: outputs 7 classes.*eval-00000"):
        accuracy.evaluate(str(path), setup["records"])
    with pytest.raises(tflite_model.ModelFileError, match="seven_classes.tflite"):
        accuracy_pipeline.run(str(path), setup["records"], test_pipeline=beam.Pipeline(runner=FnApiRunner()))


def test_an_undecodable_image_counts_in_t_and_as_wrong(setup):
    classifier = tflite_model.Classifier.from_file(setup["paths"]["float32"], 1)
    broken = records.make_record("broken", 1, ["t"], [[0, 0, 1, 1]], [False], np.zeros((1, CLASSES), np.float32), 3,
                                 encoded_image=b"\x89PNG\r\n\x1a\n truncated")
    counts = accuracy.score_record(classifier, broken)
    assert (counts.images, counts.labelled, counts.top1_correct, counts.top5_correct, counts.undecodable) == (1, 1, 0, 0, 1)
    good = accuracy.evaluate(setup["paths"]["float32"], setup["records"])
    both = good + counts
    assert both.images == COUNT + 1 and both.top1 == pytest.approx(good.top1_correct / (good.labelled + 1))


def test_batched_eval_views_equal_one_view_at_a_time(setup):
    """The accuracy pass makes the views of a chunk of images in one graph call per image shape (the
    records hold three shapes): each is the per-image view, to the bit, in colour and in grey."""
    items = list(records.read_records(setup["records"]))
    decoded = [record_pixels.decode(record) for record in items]
    assert len({image.shape for image in decoded}) == 3
    for channels in (3, 1):
        batched = record_pixels.eval_views(decoded, (SIDE, SIDE), channels)
        assert len(batched) == COUNT
        for record, pixels in zip(items, batched):
            np.testing.assert_array_equal(pixels, record_pixels.eval_view(record, (SIDE, SIDE), channels))


def test_an_undecodable_image_inside_a_chunked_pass(setup):
    path = setup["paths"]["float32"]
    classifier = tflite_model.Classifier.from_file(path, 1)
    broken = records.make_record("broken", 1, ["t"], [[0, 0, 1, 1]], [False], np.zeros((1, CLASSES), np.float32), 3,
                                 encoded_image=b"\x89PNG\r\n\x1a\n truncated")
    items = list(records.read_records(setup["records"]))
    mixed = items[:7] + [broken] + items[7:]
    counts = accuracy.evaluate_records_many({"model": classifier}, mixed, chunk_size=5)["model"]  # 5 chunks
    alone = accuracy.evaluate(path, setup["records"])
    assert _as_dict(counts) == {**_as_dict(alone), "images": COUNT + 1, "labelled": alone.labelled + 1}
    assert counts.undecodable == 1
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        accuracy.evaluate_records_many({"model": classifier}, mixed, chunk_size=0)
