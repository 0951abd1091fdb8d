"""The distillery-factorize job: report values, the entry point, and bad input refused early."""

import hashlib
import json
import os
import subprocess
import sys

import keras
import pytest
from factorize_fixtures import tiny_model, write_tiny_records
from top1_check import independent_top1

from compress import factorize, factorize_job, finetune, rank_selection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("factorize_job")
    model_path = str(directory / "student.keras")
    tiny_model().save(model_path)
    return model_path, write_tiny_records(directory), directory


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_job_report_holds_per_layer_values_and_three_top1(inputs, tmp_path):
    model_path, record_glob, _ = inputs
    output = str(tmp_path / "out" / "factorized.keras")
    tuning = finetune.FinetuneConfig(record_glob, mode="oneshot", steps=4, batch_size=8, log_every=2)
    config = factorize_job.JobConfig(model_path, record_glob, output, eval_pattern=record_glob, rank_ratio=0.25,
                                     tuning=tuning)
    lines = []
    report = factorize_job.run(config, log=lines.append)
    with open(output + ".report.json") as handle:
        assert json.load(handle) == json.loads(json.dumps(report))
    assert [(item["name"], item["rank"]) for item in report["layers"]] == [("pw1", 4), ("pw2", 6), ("logits", 2)]
    pw1 = report["layers"][0]
    assert (pw1["params_before"], pw1["params_after"], pw1["macs_before"], pw1["macs_after"]) == (
        16 * 24 + 24, 4 * 40 + 24, 64 * 16 * 24, 64 * 4 * 40)
    kernel = tiny_model().get_layer("pw1").kernel.numpy()
    assert pw1["relative_error"] == pytest.approx(factorize.relative_error(factorize.singular_values(kernel), 4))
    loaded = keras.saving.load_model(output, safe_mode=True)
    assert report["totals"]["params_after"] == loaded.count_params()
    assert report["totals"]["macs_after"] == factorize.model_macs(loaded)
    assert report["top1"]["before"] == 1.0  # the records' labels are the original model's own argmax
    # The other two equal the factorized model's and the written model's top-1, computed independently.
    ranks = {item["name"]: item["rank"] for item in report["layers"]}
    assert report["top1"]["after_factorization"] == pytest.approx(
        independent_top1(factorize.factorize_model(tiny_model(), ranks), record_glob)[0])
    assert report["top1"]["after_finetune"] == pytest.approx(independent_top1(loaded, record_glob)[0])
    assert report["finetune"]["phases"][0]["steps"] == 4
    table = factorize_job.format_report(report)
    assert "| pw1 | conv1x1 | 16x24 | 4 / 16 | 408 -> 184 | 24,576 -> 10,240 |" in table


def test_entry_point_prints_the_table(inputs, tmp_path):
    model_path, record_glob, _ = inputs
    output = str(tmp_path / "cli.keras")
    command = [sys.executable, "-m", "compress.factorize_main", f"--model={model_path}", f"--train={record_glob}",
               f"--output={output}", "--ranks=pw1:3,pw2:5", "--steps=2", "--batch_size=8", "--mode=layerwise"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| pw1 | conv1x1 | 16x24 | 3 / 16 | 408 -> 144 |" in result.stdout
    assert "| pw2 | conv1x1 | 24x32 | 5 / 24 | 800 -> 312 |" in result.stdout
    assert os.path.exists(output) and os.path.exists(output + ".report.json")


def test_output_equal_to_the_input_model_is_refused_and_the_input_kept(inputs):
    model_path, record_glob, _ = inputs
    before = _digest(model_path)
    same = os.path.join(os.path.dirname(model_path), ".", os.path.basename(model_path))  # another spelling
    with pytest.raises(factorize_job.JobError, match="is the input model; refusing to overwrite it"):
        factorize_job.run(factorize_job.JobConfig(model_path, record_glob, same, energy=0.9))
    assert _digest(model_path) == before


def test_rank_above_the_layers_rank_names_the_layer(inputs, tmp_path):
    model_path, record_glob, _ = inputs
    config = factorize_job.JobConfig(model_path, record_glob, str(tmp_path / "x.keras"), ranks={"pw2": 30})
    with pytest.raises(factorize.FactorizationError, match=r"rank 30 for layer 'pw2' is outside 1\.\.24"):
        factorize_job.run(config)
    assert not os.path.exists(tmp_path / "x.keras")


def test_model_without_1x1_convolutions_is_refused(inputs, tmp_path):
    _, record_glob, _ = inputs
    model_input = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv3x3")(model_input)
    plain = keras.Model(model_input, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))
    path = str(tmp_path / "no_pointwise.keras")
    plain.save(path)
    with pytest.raises(factorize.FactorizationError, match="no_pointwise.keras has no 1x1 convolution"):
        factorize_job.run(factorize_job.JobConfig(path, record_glob, str(tmp_path / "y.keras")))


def test_unreachable_latency_budget_is_refused_before_fine_tuning(inputs, tmp_path):
    model_path, record_glob, _ = inputs
    config = factorize_job.JobConfig(model_path, record_glob, str(tmp_path / "z.keras"), target_latency_ms=1e-6,
                                     calibration_steps=4, profile_runs=3)
    lines = []
    with pytest.raises(rank_selection.BudgetError, match=r"--target_latency_ms=1e-06 cannot be met"):
        factorize_job.run(config, log=lines.append)
    assert any("per-op profile of the int8 student" in line and "3 of 3 factorizable layers mapped" in line
               for line in lines)
    assert not any("fine-tun" in line for line in lines) and not os.path.exists(tmp_path / "z.keras")


def test_latency_reduction_is_a_budget_relative_to_the_measured_latency(inputs, tmp_path):
    """--latency_reduction=F sets the budget to (1 - F) x the measured int8 latency; an impossible F is
    refused before fine-tuning with the budget it computed."""
    model_path, record_glob, _ = inputs
    config = factorize_job.JobConfig(model_path, record_glob, str(tmp_path / "r.keras"), latency_reduction=0.999,
                                     calibration_steps=4, profile_runs=3)
    lines = []
    with pytest.raises(rank_selection.BudgetError, match="cannot be met"):
        factorize_job.run(config, log=lines.append)
    budget_line = next(line for line in lines if line.startswith("--latency_reduction=0.999: budget"))
    budget_ms, measured_ms = (float(part.split()[0]) for part in
                              (budget_line.split("budget ")[1], budget_line.split("(")[1]))
    assert budget_ms == pytest.approx(0.001 * measured_ms, rel=0.02, abs=1e-4)
    assert not os.path.exists(tmp_path / "r.keras")


def test_bad_flags_are_refused_early(inputs, tmp_path):
    model_path, record_glob, _ = inputs
    out = str(tmp_path / "o.keras")
    cases = [
        (dict(energy=0.9, rank_ratio=0.5), "choose one rank selection, got --energy and --rank_ratio"),
        (dict(energy=1.5), r"--energy must be in \(0, 1\]"),
        (dict(latency_reduction=1.0), r"--latency_reduction must be in \(0, 1\)"),
        (dict(latency_reduction=0.2, target_latency_ms=1.0),
         "choose one rank selection, got --target_latency_ms and --latency_reduction"),
        (dict(model_path=str(tmp_path / "missing.keras")), "--model: .*missing.keras does not exist"),
        (dict(train_pattern=str(tmp_path / "nothing-*")), "--train: no soft-label record files match"),
        (dict(output_path=str(tmp_path / "o.h5")), "--output must end in .keras"),
    ]
    for overrides, message in cases:
        arguments = dict(model_path=model_path, train_pattern=record_glob, output_path=out) | overrides
        with pytest.raises(factorize_job.JobError, match=message):
            factorize_job.validate(factorize_job.JobConfig(**arguments))
    with pytest.raises(factorize_job.JobError, match="expected LAYER:RANK"):
        factorize_job.parse_ranks("pw1=3")
    assert factorize_job.parse_ranks("pw1:3, pw2:5") == {"pw1": 3, "pw2": 5}


def test_selection_rounds_are_measured_and_reported(inputs, tmp_path):
    """With a budget, each round's selection is built, converted and timed before fine-tuning; the
    ranks fine-tuned are one round's, and the report keeps every round."""
    model_path, record_glob, _ = inputs
    tuning = finetune.FinetuneConfig(record_glob, steps=2, batch_size=8)
    config = factorize_job.JobConfig(model_path, record_glob, str(tmp_path / "l.keras"), latency_reduction=0.01,
                                     calibration_steps=4, profile_runs=3, selection_rounds=2, tuning=tuning)
    lines = []
    report = factorize_job.run(config, log=lines.append)  # round 1 trusts MACs: 1% is always within reach
    rounds = report["selection"]["selection_rounds"]
    assert 1 <= len(rounds) <= 2 and all(entry["measured_ms"] > 0 for entry in rounds)
    assert {layer["name"]: layer["rank"] for layer in report["layers"]} in [entry["ranks"] for entry in rounds]
    assert sum(line.startswith("latency round") for line in lines) >= len(rounds)
    assert rounds[0]["op_overhead_ms"] == 0.0
    assert report["latency"]["measured_factorized_ms"] > 0  # after fine-tuning, timed against the student
    assert "student_int8" not in report["selection"] and "student_int8" not in report["latency"]
    if len(rounds) == 2:  # the second round is charged the first one's measured miss per factorized layer
        first = rounds[0]
        expected = max(0.0, (first["measured_ms"] - first["estimated_ms"]) / len(first["ranks"]))
        assert rounds[1]["op_overhead_ms"] == pytest.approx(expected)
