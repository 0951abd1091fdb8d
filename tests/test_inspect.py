"""Tests of distillery-inspect: the printed JSON lines carry the record's values."""

import json
import subprocess
import sys

import numpy as np

from distillery import records
from pipelines import inspect_records


def _write(tmp_path):
    logits = np.array([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 0.0]], np.float32)
    record = records.make_record("photo-1", 2, ["builtin:mobilenet_v2_imagenet"], [[0, 0, 1, 1], [0.1, 0.2, 0.5, 0.9]],
                                 [False, True], logits, top_k=2)
    unlabeled = records.make_record("photo-2", -1, ["t"], [[0, 0, 1, 1]], [False], logits[:1], top_k=4)
    path = tmp_path / "soft-00000-of-00001"
    records.write_records(str(path), [record, unlabeled])
    return str(path), logits


def test_summary_values(tmp_path):
    path, logits = _write(tmp_path)
    first, second = list(inspect_records.summaries(path, top=2))
    assert first["image_id"] == "photo-1" and first["label"] == 2
    assert first["teachers"] == ["builtin:mobilenet_v2_imagenet"]
    assert first["views"][1]["flip"] is True and first["views"][0]["flip"] is False
    np.testing.assert_allclose(first["views"][1]["crop"], [0.1, 0.2, 0.5, 0.9], atol=1e-4)
    softmax = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert [c for c, _ in first["views"][0]["top"]] == [0, 2]
    np.testing.assert_allclose([p for _, p in first["views"][0]["top"]], softmax[[0, 2]], atol=1e-6)
    assert second["label"] == -1 and len(second["views"][0]["top"]) == 2


def test_command_prints_json_lines_with_limit_and_names(tmp_path):
    path, _ = _write(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\nfish\n")
    output = subprocess.run([sys.executable, "-m", "pipelines.inspect_records", path, "--limit=1", "--top=1",
                             f"--class_names={names}"], check=True, capture_output=True, text=True).stdout
    lines = output.strip().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert parsed["views"][0]["top"][0][0] == 0 and parsed["views"][0]["top"][0][2] == "cat"
    assert parsed["views"][1]["top"][0][2] == "dog"


def test_command_names_missing_files(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.inspect_records", str(tmp_path / "none-*")],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "no soft-label record files match" in result.stderr and "none-*" in result.stderr
