"""The end-to-end chain of `make demo`, shrunk: every stage runs through the user commands, then each
stage's output is read back and the report's numbers are checked against each other."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from top1_check import independent_tflite_top1, independent_top1

from benchmark import score
from configs import demo as demo_config
from demo import data as demo_data
from demo import goals
from distillery import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One xdist worker runs both chains, one after the other (Makefile); beside the other worker's tests a chain
# runs slower than alone, hence a longer timeout than pytest.ini's 600 s.
pytestmark = [pytest.mark.demo_chain, pytest.mark.xdist_group("chain"), pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    if not os.path.isdir(demo_data.FASHION_MNIST_DIR):
        pytest.skip(f"{demo_data.FASHION_MNIST_DIR} missing: install the Debian package dataset-fashion-mnist")
    output_dir = str(tmp_path_factory.mktemp("demo"))
    completed = subprocess.run([sys.executable, "-m", "demo.run", "--runlocal", f"--output_dir={output_dir}"],
                               cwd=REPO, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output_dir, completed.stderr


def test_every_stage_shows_progress(demo_dir):
    _, log = demo_dir
    for stage in range(1, 8):
        assert f"=== stage {stage}/7" in log
    assert "images/s" in log  # extraction and training report throughput


def test_soft_labels_account_for_every_image(demo_dir):
    output_dir, _ = demo_dir
    tiny = demo_config.TINY
    for part, count, views in (("labelled", tiny.labelled, tiny.views), ("unlabeled", tiny.unlabeled, tiny.views),
                               ("test", tiny.test, 1)):
        written = list(records.read_records(os.path.join(output_dir, "soft", f"{part}-*")))
        with open(os.path.join(output_dir, "dead_letters", f"{part}.jsonl"), encoding="utf-8") as handle:
            dead = [line for line in handle if line.strip()]
        assert len(written) + len(dead) == count and not dead
        assert {record.num_views for record in written} == {views}
        assert all(record.encoded_image for record in written)
        labels = {record.label for record in written}
        assert labels == {-1} if part == "unlabeled" else labels <= set(range(10)) and -1 not in labels


def test_teacher_top1_is_the_teacher_called_on_the_centre_crops(demo_dir):
    output_dir, _ = demo_dir
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from distillery import views  # pylint: disable=import-outside-toplevel

    teacher = keras.models.load_model(os.path.join(output_dir, "teacher.keras"))
    images, labels = demo_data.read_images(os.path.join(output_dir, "data", "test.tfrecord"))
    centre = np.stack([views.eval_view(tf.constant(image), (32, 32)).numpy() for image in images])
    direct = float(np.mean(np.argmax(teacher.predict(centre, verbose=0), axis=1) == labels))
    reported = json.load(open(os.path.join(output_dir, "report.json")))["demo"]["teacher_top1"]
    # The extraction's centre box lies on the records' uint16 grid: a prediction on the edge may flip.
    assert abs(reported - direct) <= 2 / len(labels), (reported, direct)


def test_students_factorized_and_tflite_models_exist_and_parse(demo_dir):
    output_dir, _ = demo_dir
    for name in ("hard", "distilled", "distilled_unlabeled"):
        summary = json.load(open(os.path.join(output_dir, "students", name, "summary.json")))
        expected_steps = demo_config.TINY.train_steps_unlabeled if name == "distilled_unlabeled" else \
            demo_config.TINY.train_steps
        assert summary["steps"] == expected_steps
        # The trainer's top-1 is the saved student's on the test records, evaluated here independently.
        top1, labelled = independent_top1(os.path.join(output_dir, "students", name, "student.keras"),
                                          os.path.join(output_dir, "soft", "test-*"))
        assert goals.top1_of_summary(summary) == pytest.approx(top1) and summary["eval_images"] == labelled
    tiny = demo_config.TINY
    temperatures = {"hard": tiny.distilled_temperature, "distilled": tiny.distilled_temperature,
                    "distilled_unlabeled": tiny.unlabeled_temperature}
    alphas = {"hard": 1.0, "distilled": tiny.alpha, "distilled_unlabeled": tiny.alpha}
    for name, temperature in temperatures.items():
        summary = json.load(open(os.path.join(output_dir, "students", name, "summary.json")))
        assert (summary["alpha"], summary["temperature"]) == (alphas[name], temperature), name
    factorize_report = json.load(open(os.path.join(output_dir, "students", "factorized.keras.report.json")))
    # The best student is factorized and fine-tuned at its own temperature.
    best = os.path.basename(os.path.dirname(factorize_report["model"]))
    assert best == json.load(open(os.path.join(output_dir, "report.json")))["demo"]["best_student"]
    assert factorize_report["finetune"]["temperature"] == temperatures[best]
    # The tiny preset names its layers and ranks (--ranks): exactly those are factorized.
    named = {name: int(rank) for name, rank in
             (pair.split(":") for pair in demo_config.TINY.factorize_ranks.split(","))}
    assert {layer["name"]: layer["rank"] for layer in factorize_report["layers"]} == named
    assert factorize_report["mode"] == "layerwise"
    assert factorize_report["finetune"]["final_steps"] == demo_config.TINY.factorize_final_steps
    phases = factorize_report["finetune"]["phases"]
    assert len(phases) == len(factorize_report["layers"]) + 1  # one per layer, then the joint phase
    assert phases[-1]["steps"] == demo_config.TINY.factorize_final_steps
    from distillery import tflite_model  # pylint: disable=import-outside-toplevel

    tflite_dir = os.path.join(output_dir, "tflite")
    names = sorted(os.listdir(tflite_dir))
    assert len([n for n in names if n.endswith("_int8.tflite")]) == 4 and any(n.endswith("_float32.tflite") for n in names)
    for name in names:
        interpreter = tflite_model.make_interpreter(tflite_model.read_tflite(os.path.join(tflite_dir, name)))
        for detail, value in zip(interpreter.get_input_details(), tflite_model.random_inputs(interpreter)):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        (output,) = interpreter.get_output_details()
        assert tuple(output["shape"]) == (1, 10), name
        assert output["dtype"] == (np.uint8 if name.endswith("_int8.tflite") else np.float32), name


def test_report_numbers_are_consistent(demo_dir):
    output_dir, _ = demo_dir
    report = json.load(open(os.path.join(output_dir, "report.json")))
    entries = report["models"]
    assert len(entries) == 5
    for entry in entries:
        assert entry["images"] == demo_config.TINY.test
        accuracy = entry["top1"]
        assert entry["lpirc_score"] == pytest.approx(score.lpirc_score(accuracy, entry["runtime_ms"], entry["images"]))
        assert entry["lpirc_score"] == pytest.approx(accuracy / max(30.0 * entry["images"], entry["runtime_ms"]))
        latency = entry["latency_ms"]
        assert latency["min"] <= latency["median"] <= latency["p90"]
        assert 0.0 <= entry["top1"] <= entry["top5"] <= 1.0
        # The report's top-1 against the model run outside the benchmark's code, on the same test records.
        top1, labelled = independent_tflite_top1(entry["model"], os.path.join(output_dir, "soft", "test-*"))
        assert labelled == entry["images"] and entry["top1"] == pytest.approx(top1), entry["model"]
        assert entry["per_op_sum_ms"] > 0
    summary = report["demo"]
    recomputed = goals.check(os.path.join(output_dir, "report.json"), best=summary["best_student"])
    assert [g["value"] for g in recomputed["goals"]] == [g["value"] for g in summary["goals"]]
    by_name = {os.path.splitext(os.path.basename(e["model"]))[0]: e for e in entries}
    expected_speedup = 1 - (by_name["factorized_int8"]["latency_ms"]["median"]
                            / by_name[f"{summary['best_student']}_int8"]["latency_ms"]["median"])
    assert summary["goals"][3]["value"] == pytest.approx(expected_speedup, abs=1e-5)
    markdown = open(os.path.join(output_dir, "report.md"), encoding="utf-8").read()
    assert "## Demo goals" in markdown and "factorized_int8" in markdown
    for png in ("accuracy_vs_latency.png", "per_op_factorized_int8.png"):
        with open(os.path.join(output_dir, png), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite([e["lpirc_score"] for e in entries]).all()
