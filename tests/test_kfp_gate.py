"""The pipeline's quality gate on benchmark reports: blessed within both limits, refused naming each reason."""

from __future__ import annotations

import json
import types

import pytest

from pipelines_kfp import gate, steps


def report(int8_top1=0.80, float32_top1=0.805, latency_ms=2.0):
    return {"models": [
        {"model": "/r/hard_int8.tflite", "top1": 0.7, "latency_ms": {"median": 2.5}},
        {"model": "/r/factorized_int8.tflite", "top1": int8_top1, "latency_ms": {"median": latency_ms}},
        {"model": "/r/distilled_float32.tflite", "top1": float32_top1, "latency_ms": {"median": 5.0}}]}


def test_a_model_within_the_drop_and_the_budget_is_blessed_with_its_numbers():
    verdict = gate.judge(report(), "factorized_int8", "distilled_float32", max_int8_drop=1.0, latency_budget_ms=30)
    assert verdict.blessed and verdict.reasons == ()
    assert verdict.drop_points == pytest.approx(0.5)
    metadata = verdict.metadata()
    assert metadata["blessed"] is True
    assert (metadata["int8_top1"], metadata["float32_top1"], metadata["latency_ms"]) == (0.80, 0.805, 2.0)
    assert "blessed" in verdict.message()


@pytest.mark.parametrize("values, limits, reasons", [
    (dict(int8_top1=0.78), dict(), ["2.50 points below float32 (distilled_float32: 0.8050), more than max_int8_drop=1.0"]),
    (dict(latency_ms=2.0), dict(latency_budget_ms=1e-6), ["median latency 2.0000 ms misses latency_budget_ms=1e-06"]),
    (dict(int8_top1=0.5, latency_ms=40.0), dict(), ["points below float32", "misses latency_budget_ms=30"]),
    (dict(int8_top1=0.795), dict(), []),  # exactly 1 point: still within
])
def test_each_missed_limit_is_a_reason(values, limits, reasons):
    verdict = gate.judge(report(**values), "factorized_int8", "distilled_float32", **{"max_int8_drop": 1.0,
                                                                                      "latency_budget_ms": 30.0, **limits})
    assert len(verdict.reasons) == len(reasons)
    for reason, expected in zip(verdict.reasons, reasons):
        assert expected in reason
    assert verdict.blessed == (not reasons)


def test_no_labels_or_a_missing_model_is_refused():
    unlabelled = report(int8_top1=None)
    assert "no top-1" in gate.judge(unlabelled, "factorized_int8", "distilled_float32").reasons[0]
    with pytest.raises(gate.GateError, match="no model 'factorized_float16'"):
        gate.judge(report(), "factorized_float16", "distilled_float32")


def _artifact(path, **metadata):
    return types.SimpleNamespace(path=str(path), uri=str(path), metadata=dict(metadata))


@pytest.mark.parametrize("budget, blessed", [(30.0, True), (1e-6, False)])
def test_the_gate_step_writes_the_blessed_model_or_fails_and_always_writes_its_verdict(tmp_path, budget, blessed):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text(json.dumps(report()))
    (tmp_path / "report" / "report.md").write_text("# report\n")
    (tmp_path / "candidate").mkdir()
    (tmp_path / "candidate" / "factorized_int8.tflite").write_bytes(b"TFL3")
    candidate = _artifact(tmp_path / "candidate", name="factorized_int8", file="factorized_int8.tflite")
    reference = _artifact(tmp_path / "reference", name="distilled_float32", file="distilled_float32.tflite")
    output, verdict_md = _artifact(tmp_path / "blessed"), _artifact(tmp_path / "verdict.md")
    arguments = (_artifact(tmp_path / "report"), candidate, reference, 1.0, budget, output, verdict_md)
    if blessed:
        steps.gate(*arguments)
        assert (tmp_path / "blessed" / "factorized_int8.tflite").read_bytes() == b"TFL3"
        assert (tmp_path / "blessed" / "report.json").exists()
        assert output.metadata["blessed"] is True and output.metadata["file"] == "factorized_int8.tflite"
    else:
        with pytest.raises(gate.GateError, match="misses latency_budget_ms=1e-06"):
            steps.gate(*arguments)
        assert not (tmp_path / "blessed" / "factorized_int8.tflite").exists() and "blessed" not in output.metadata
    written = json.loads((tmp_path / "blessed" / "verdict.json").read_text())
    assert written["blessed"] is blessed and written["latency_budget_ms"] == budget
    assert "Quality gate" in (tmp_path / "verdict.md").read_text()
