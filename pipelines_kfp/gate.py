"""The quality gate: is the chain's int8 model good enough to ship?

It reads the benchmark's report.json and refuses the candidate (the factorized student in int8) when its
top-1 is more than `max_int8_drop` points below the float32 model it was compressed from (the best student
before factorization), or when its median single-thread latency exceeds `latency_budget_ms`. No
TensorFlow here: the gate step starts in a second.

    python -c "from pipelines_kfp import gate; import json; print(gate.judge(json.load(open('runs/demo/report.json')), \
'factorized_int8', 'distilled_unlabeled_float32', 1.0, 30.0))"
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any


class GateError(RuntimeError):
    """The candidate is not blessed; the message gives every reason with its numbers."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The gate's decision and the numbers it was made on (top-1 as fractions, drop in points)."""

    candidate: str
    reference: str
    int8_top1: float | None
    float32_top1: float | None
    drop_points: float | None
    latency_ms: float
    max_int8_drop: float
    latency_budget_ms: float
    reasons: tuple[str, ...]

    @property
    def blessed(self) -> bool:
        return not self.reasons

    def metadata(self) -> dict[str, Any]:
        """What the blessed artifact carries (and verdict.json holds)."""
        return {"blessed": self.blessed, **{key: value for key, value in dataclasses.asdict(self).items()
                                            if key != "reasons"}, "reasons": list(self.reasons)}

    def message(self) -> str:
        if self.blessed:
            return (f"gate: {self.candidate} blessed: int8 top-1 {self.int8_top1:.4f}, {self.drop_points:.2f} points "
                    f"from float32 ({self.reference}: {self.float32_top1:.4f}; at most {self.max_int8_drop}), median "
                    f"latency {self.latency_ms:.4f} ms (budget {self.latency_budget_ms} ms)")
        return f"gate: {self.candidate} is not blessed: " + "; ".join(self.reasons)


def model_name(path: str) -> str:
    """A report entry's model name: its file name without .tflite (factorized_int8, hard_int8, ...)."""
    return os.path.splitext(os.path.basename(path))[0]


def judge(report: Mapping[str, Any], candidate: str, reference: str, max_int8_drop: float = 1.0,
          latency_budget_ms: float = 30.0) -> Verdict:
    """The verdict on `candidate` against `reference`, both model names of the report's entries.

    Raises:
      GateError: a model is not in the report (the report and the pipeline disagree).
    """
    entries = {model_name(entry["model"]): entry for entry in report["models"]}
    for name in (candidate, reference):
        if name not in entries:
            raise GateError(f"gate: no model {name!r} in the benchmark report (models: {sorted(entries)})")
    int8_top1, float32_top1 = entries[candidate].get("top1"), entries[reference].get("top1")
    latency = float(entries[candidate]["latency_ms"]["median"])
    reasons = []
    drop = None
    if int8_top1 is None or float32_top1 is None:
        reasons.append("the report has no top-1 (the evaluation records carry no labels)")
    else:
        drop = round((float32_top1 - int8_top1) * 100.0, 6)
        if drop > max_int8_drop:
            reasons.append(f"int8 top-1 {int8_top1:.4f} is {drop:.2f} points below float32 ({reference}: "
                           f"{float32_top1:.4f}), more than max_int8_drop={max_int8_drop}")
    if latency > latency_budget_ms:
        reasons.append(f"median latency {latency:.4f} ms misses latency_budget_ms={latency_budget_ms:g}")
    return Verdict(candidate, reference, int8_top1, float32_top1, drop, latency, max_int8_drop, latency_budget_ms,
                   tuple(reasons))
