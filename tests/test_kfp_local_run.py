"""The Kubeflow pipeline of the tiny demo recipe, end to end on this machine: `distillery-pipeline run --local`
(kfp.local, every step a subprocess, offline), its artifacts checked as the demo chain's outputs are; then the
same run with a latency budget no model meets, which reruns only the gate (the other steps come from the
cache) and fails naming the reason."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmark import score
from configs import demo as demo_config
from demo import data as demo_data
from distillery import records, tflite_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = demo_config.TINY

# One xdist worker runs both chains, one after the other (Makefile); beside the other worker's tests a chain
# runs slower than alone, hence a longer timeout than pytest.ini's 600 s.
pytestmark = [pytest.mark.demo_chain, pytest.mark.xdist_group("chain"), pytest.mark.timeout(1500)]


def run_pipeline(output_dir: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines_kfp.main", "run", "--local", "--config=demo", "--runlocal",
                           f"--output_dir={output_dir}", *flags], cwd=REPO, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    if not os.path.isdir(demo_data.FASHION_MNIST_DIR):
        pytest.skip(f"{demo_data.FASHION_MNIST_DIR} missing: install the Debian package dataset-fashion-mnist")
    output_dir = str(tmp_path_factory.mktemp("kfp"))
    # The tiny students are barely trained: the int8 limit is opened; the latency budget is the default.
    completed = run_pipeline(output_dir, "--max_int8_drop=100")
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    (run_dir,) = glob.glob(os.path.join(output_dir, "distillery-demo-runlocal-*"))
    return output_dir, run_dir, json.loads(completed.stdout.strip().splitlines()[-1])


def outputs(run_dir: str, task: str) -> dict:
    """{output name: artifact} of one task's executor output (task: a folder under the run, e.g. 'extract-2')."""
    with open(os.path.join(run_dir, task, "executor_output.json"), encoding="utf-8") as handle:
        written = json.load(handle)
    return {name: value["artifacts"][0] for name, value in written.get("artifacts", {}).items()}


def test_soft_labels_account_for_every_image(pipeline_run):
    _, run_dir, _ = pipeline_run
    expected = {"labelled": (TINY.labelled, TINY.views), "unlabeled": (TINY.unlabeled, TINY.views), "test": (TINY.test, 1)}
    found = {}
    for task in ("extract", "extract-2", "extract-3"):
        dataset = outputs(run_dir, task)["records"]
        metadata, folder = dataset["metadata"], dataset["uri"]
        part = metadata["part"]
        written = list(records.read_records(os.path.join(folder, metadata["summary"])))  # the summary, as readers take it
        with open(os.path.join(folder, metadata["dead_letters"]), encoding="utf-8") as handle:
            dead = [line for line in handle if line.strip()]
        count, views = expected[part]
        assert len(written) + len(dead) == count == metadata["read"] and not dead and metadata["balanced"]
        assert {record.num_views for record in written} == {views}
        labels = {record.label for record in written}
        assert labels == {-1} if part == "unlabeled" else -1 not in labels
        found[part] = len(written)
    assert found == {part: count for part, (count, _) in expected.items()}


def test_every_student_is_trained_with_its_recipe_settings_and_every_tflite_runs(pipeline_run):
    _, run_dir, _ = pipeline_run
    steps = {}
    for iteration in sorted(glob.glob(os.path.join(run_dir, "for-loop-*-iteration-*"))):
        model = outputs(iteration, "train")["model"]
        with open(os.path.join(model["uri"], "summary.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
        steps[model["metadata"]["student"]] = summary["steps"]
        assert summary["alpha"] == (1.0 if model["metadata"]["student"] == "hard" else TINY.alpha)
    assert steps == {"hard": TINY.train_steps, "distilled": TINY.train_steps,
                     "distilled_unlabeled": TINY.train_steps_unlabeled}
    tflites = sorted(glob.glob(os.path.join(run_dir, "**", "*.tflite"), recursive=True))
    names = {os.path.basename(path) for path in tflites}
    assert {"hard_int8.tflite", "distilled_int8.tflite", "distilled_unlabeled_int8.tflite", "factorized_int8.tflite"} <= names
    assert len([name for name in names if name.endswith("_float32.tflite")]) == 1
    for path in tflites:
        interpreter = tflite_model.make_interpreter(tflite_model.read_tflite(path))
        for detail, value in zip(interpreter.get_input_details(), tflite_model.random_inputs(interpreter)):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        (output,) = interpreter.get_output_details()
        assert tuple(output["shape"]) == (1, 10), path
        assert output["dtype"] == (np.uint8 if path.endswith("_int8.tflite") else np.float32), path


def test_the_report_numbers_are_consistent_and_the_gate_blessed_the_factorized_int8_model(pipeline_run):
    _, run_dir, blessed = pipeline_run
    with open(os.path.join(outputs(run_dir, "benchmark")["report"]["uri"], "report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    entries = {os.path.basename(entry["model"])[:-len(".tflite")]: entry for entry in report["models"]}
    best = outputs(run_dir, "choose-best")["best"]["metadata"]["student"]
    assert list(entries) == ["hard_int8", "distilled_int8", "distilled_unlabeled_int8", "factorized_int8",
                             f"{best}_float32"]
    for entry in entries.values():
        assert entry["images"] == TINY.test
        assert entry["lpirc_score"] == pytest.approx(score.lpirc_score(entry["top1"], entry["runtime_ms"], entry["images"]))
        assert entry["latency_ms"]["min"] <= entry["latency_ms"]["median"] <= entry["latency_ms"]["p90"]
        assert 0.0 <= entry["top1"] <= entry["top5"] <= 1.0
    assert blessed["blessed"] is True and blessed["reasons"] == []
    assert (blessed["candidate"], blessed["reference"]) == ("factorized_int8", f"{best}_float32")
    assert blessed["int8_top1"] == entries["factorized_int8"]["top1"]
    assert blessed["float32_top1"] == entries[f"{best}_float32"]["top1"]
    assert blessed["latency_ms"] == entries["factorized_int8"]["latency_ms"]["median"] <= 30.0
    folder = blessed["blessed_uri"]
    assert folder == os.path.join(run_dir, "gate", "blessed")
    assert sorted(os.listdir(folder)) == ["factorized_int8.tflite", "report.json", "report.md", "verdict.json"]
    with open(os.path.join(folder, "factorized_int8.tflite"), "rb") as handle, \
            open(glob.glob(os.path.join(run_dir, "quantize-*", "tflite", "factorized_int8.tflite"))[0], "rb") as original:
        assert handle.read() == original.read()


def test_a_budget_no_model_meets_fails_the_run_at_the_gate_naming_it_and_reruns_only_the_gate(pipeline_run):
    output_dir, _, _ = pipeline_run
    completed = run_pipeline(output_dir, "--max_int8_drop=100", "--latency_budget_ms=1e-6")
    assert completed.returncode != 0
    assert "the gate refused factorized_int8" in completed.stderr and "misses latency_budget_ms=1e-06" in completed.stderr
    executed = set(re.findall(r"Executing task \S*?'([\w-]+)'", completed.stdout + completed.stderr))
    assert executed == {"gate"}, executed  # every other step came from the cache
    newest = max(glob.glob(os.path.join(output_dir, "distillery-demo-runlocal-*")), key=os.path.getmtime)
    with open(os.path.join(newest, "gate", "blessed", "verdict.json"), encoding="utf-8") as handle:
        verdict = json.load(handle)
    assert verdict["blessed"] is False and not os.path.exists(os.path.join(newest, "gate", "blessed", "factorized_int8.tflite"))
