"""LPIRC score against hand computations; report.json/report.md/PNGs; the distillery-benchmark command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import keras
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from benchmark import accuracy, report, score
from compress import quantize
from distillery import latency, op_profile, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lpirc_score_hand_computations():
    # Faster than 30 ms per image: the floor 30 * T counts. 0.7 / (30 * 100) = 2.3333e-4.
    assert score.lpirc_score(0.70, 1800.0, 100) == pytest.approx(0.70 / 3000.0)
    # Slower: the runtime counts. 0.7 / 4500 = 1.5556e-4.
    assert score.lpirc_score(0.70, 4500.0, 100) == pytest.approx(0.70 / 4500.0)
    # At exactly 30 ms per image both are equal.
    assert score.lpirc_score(0.5, 300.0, 10) == pytest.approx(0.5 / 300.0)
    with pytest.raises(ValueError, match="T=0"):
        score.lpirc_score(0.5, 10.0, 0)
    with pytest.raises(ValueError, match="fraction"):
        score.lpirc_score(70.0, 10.0, 10)


def _stats(median: float) -> latency.LatencyStats:
    return latency.LatencyStats.from_samples([median * 0.9, median, median * 1.2])


def test_model_entry_and_report_files(tmp_path):
    counts = accuracy.EvalCounts(images=50, labelled=40, top1_correct=30, top5_correct=38, teacher_agree=45,
                                 runtime_ms=250.0)
    unlabeled = accuracy.EvalCounts(images=20, teacher_agree=15, runtime_ms=900.0)
    rows = (op_profile.OpRow(0, "CONV_2D", (1, 8, 8, 4), "INT8", "conv1", 0.3, 0.75),
            op_profile.OpRow(1, "FULLY_CONNECTED", (1, 10), "INT8", "", 0.1, 0.25))
    profile = op_profile.OpProfile(rows, whole_model_ms=0.42, num_threads=1)
    entries = [report.model_entry("/m/a_int8.tflite", 1000, _stats(2.0), 1, profile, counts),
               report.model_entry("/m/b_float32.tflite", 4000, _stats(5.0), 1, None, unlabeled),
               report.model_entry("/m/c.tflite", 4000, _stats(5.0), 2)]
    first = entries[0]
    assert first["latency_ms"] == {"min": 1.8, "median": 2.0, "p90": 2.32}
    assert first["per_op_sum_ms"] == pytest.approx(0.4) and first["per_op"][0]["op_type"] == "CONV_2D"
    assert (first["top1"], first["top5"], first["images"]) == (0.75, 0.95, 50)
    # 50 images at 5 ms each: the 30 ms floor applies, 0.75 / 1500.
    assert first["lpirc_score"] == pytest.approx(0.75 / 1500.0)
    second = entries[1]
    assert "top1" not in second and second["teacher_agreement"] == 0.75
    assert second["lpirc_score"] == pytest.approx(0.75 / 900.0) and second["lpirc_accuracy"] == "teacher_agreement"
    assert "lpirc_score" not in entries[2] and entries[2]["num_threads"] == 2
    written = report.write_report(entries, str(tmp_path / "report"), {"/m/a_int8.tflite": profile})
    data = json.load(open(written["json"]))
    assert [entry["model"] for entry in data["models"]] == ["/m/a_int8.tflite", "/m/b_float32.tflite", "/m/c.tflite"]
    markdown = open(written["markdown"]).read()
    assert "| a_int8.tflite | 1.0 | 75.00% | 95.00% | 90.00% | 2.000 | 2.320 | 1 | 50 | 250.0 | 5.000e-04 |" in markdown
    assert "sum of ops 0.400 ms (incl. one call overhead 0.0000 ms) vs whole model 0.420 ms" in markdown
    for key in ("accuracy_vs_latency", "per_op:/m/a_int8.tflite"):
        with open(written[key], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(written[key]).shape[0] > 100


def test_report_to_a_remote_file_system_is_copied_there():
    """A gs:// report_dir is written locally and copied with tf.io.gfile; TF's ram:// stands in for GCS
    here (tf.io.gfile's GCS endpoint cannot be pointed at an emulator, docs/decisions/005-gcs-and-its-emulator.md)."""
    import tensorflow as tf

    counts = accuracy.EvalCounts(images=10, labelled=10, top1_correct=7, top5_correct=9, teacher_agree=8,
                                 runtime_ms=20.0)
    entries = [report.model_entry("/m/a_int8.tflite", 1000, _stats(2.0), 1, None, counts)]
    written = report.write_report(entries, "ram://reports/run1", None)
    assert written["json"] == "ram://reports/run1/report.json"
    with tf.io.gfile.GFile(written["json"]) as handle:
        assert json.load(handle)["models"][0]["top1"] == 0.7
    with tf.io.gfile.GFile(written["markdown"]) as handle:
        assert "a_int8.tflite" in handle.read()
    assert sorted(tf.io.gfile.listdir("ram://reports/run1")) == ["accuracy_vs_latency.png", "report.json", "report.md"]


def _run(args, timeout=240):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_benchmark_command_end_to_end(tmp_path):
    """distillery-benchmark on a float32 and an int8 model with --eval and --profile; report checked."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv1")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="conv2_dw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    rng = np.random.default_rng(0)
    items = []
    for index in range(12):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
        items.append(records.make_record(f"i{index}", index % 5, ["t"], np.array([[0, 0, 1, 1]]), np.zeros(1, bool),
                                         rng.normal(size=(1, 5)).astype(np.float32), 5, encoded_image=buffer.getvalue()))
    pattern = str(tmp_path / "eval-00000.tfrecord")
    records.write_records(pattern, items)
    paths = [str(tmp_path / "m_float32.tflite"), str(tmp_path / "m_int8.tflite")]
    open(paths[0], "wb").write(quantize.convert(model, "float32"))
    calibration = [rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32) for _ in range(4)]
    open(paths[1], "wb").write(quantize.convert(model, "int8", calibration))
    report_dir = str(tmp_path / "report")
    result = _run(["benchmark.main", *paths, f"--eval={pattern}", "--profile", "--runs=10", "--rounds=2",
                   "--profile_runs=10", f"--report_dir={report_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.load(open(os.path.join(report_dir, "report.json")))["models"]
    assert [entry["model"] for entry in data] == paths
    for entry, path in zip(data, paths):
        expected = accuracy.evaluate(path, pattern)
        assert entry["images"] == 12 and entry["top1"] == pytest.approx(expected.top1, abs=1e-5)
        assert entry["top5"] == pytest.approx(expected.top5, abs=1e-5)
        assert entry["size_bytes"] == os.path.getsize(path) and entry["num_threads"] == 1
        assert entry["runs"] == 20  # 2 interleaved rounds of 10, pooled
        assert 0 < entry["latency_ms"]["min"] <= entry["latency_ms"]["median"] <= entry["latency_ms"]["p90"]
        assert entry["per_op_sum_ms"] > 0 and entry["lpirc_score"] == pytest.approx(expected.top1 / (30 * 12))
    assert os.path.exists(os.path.join(report_dir, "accuracy_vs_latency.png"))
    assert os.path.exists(os.path.join(report_dir, "per_op_m_int8.png"))
    assert "m_int8.tflite" in open(os.path.join(report_dir, "report.md")).read()
    # A corrupt file among the models stops the run before any timing, naming the file.
    corrupt = tmp_path / "broken.tflite"
    corrupt.write_bytes(open(paths[1], "rb").read()[:200])
    result = _run(["benchmark.main", paths[0], str(corrupt), f"--report_dir={tmp_path / 'r2'}"])
    assert result.returncode == 2
    assert f"distillery-benchmark: error: {corrupt}: corrupt TFLite flatbuffer (" in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "r2" / "report.json")
    # An unwritable --report_dir stops the run before any timing, naming the flag and the reason.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _run(["benchmark.main", paths[0], f"--report_dir={blocker}/report"])
    assert result.returncode == 2
    assert (f"distillery-benchmark: error: --report_dir={blocker}/report: cannot write to {blocker}/report: "
            "Not a directory") in result.stderr, result.stderr[-2000:]
    assert "latency min" not in result.stdout
