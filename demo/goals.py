"""The demo's goals, read from the benchmark's report.json, and their section of report.md.

Goals: the distilled student >= the hard-label student + 1 point of top-1; adding unlabeled
data >= the distilled student; int8 within 1 point of float; the factorized int8 student >= 16% faster
than the unfactorized int8 one, within 1 point of top-1.

    python -c "from demo import goals; print(goals.check('runs/demo/report.json', best='distilled_unlabeled'))"
"""

from __future__ import annotations

import json
import os


def top1_of_summary(summary: dict) -> float:
    """The final eval top-1 of a trainer summary.json."""
    for key in ("eval_top1", "top1"):
        if key in summary:
            return float(summary[key])
    if isinstance(summary.get("eval"), dict) and "top1" in summary["eval"]:
        return float(summary["eval"]["top1"])
    raise KeyError(f"no top-1 in the trainer summary (keys: {sorted(summary)})")


def _entries_by_name(report_path: str) -> dict[str, dict]:
    with open(report_path, encoding="utf-8") as handle:
        entries = json.load(handle)["models"]
    return {os.path.splitext(os.path.basename(entry["model"]))[0]: entry for entry in entries}


def _goal(description: str, value: float, target: float, passed: bool) -> dict:
    return {"goal": description, "value": round(value, 5), "target": round(target, 5), "met": bool(passed)}


def check(report_path: str, best: str, teacher_top1: float | None = None, images: dict | None = None,
          stage_seconds: dict | None = None) -> dict:
    """Evaluates the four goals on the benchmark's report.json.

    Args:
      report_path: the benchmark's report.json (entries named <student>_int8 / <best>_float32).
      best: the student that was factorized and also converted to float32.
      teacher_top1, images, stage_seconds: context recorded next to the goals.

    Returns:
      {"goals": [...], "top1": {...}, "latency_ms": {...}, ...} ready for JSON.
    """
    entries = _entries_by_name(report_path)
    top1 = {name: entry.get("top1") for name, entry in entries.items()}
    latency = {name: entry["latency_ms"]["median"] for name, entry in entries.items()}
    hard, distilled = top1["hard_int8"], top1["distilled_int8"]
    unlabeled = top1["distilled_unlabeled_int8"]
    best_int8, best_float = top1[f"{best}_int8"], top1[f"{best}_float32"]
    factorized = top1["factorized_int8"]
    speedup = 1.0 - latency["factorized_int8"] / latency[f"{best}_int8"]
    goal_list = [
        _goal("distilled student >= hard-label student + 1 point (int8 top-1)", distilled - hard, 0.01,
              distilled >= hard + 0.01),
        _goal("distilled + unlabeled >= distilled (int8 top-1)", unlabeled - distilled, 0.0, unlabeled >= distilled),
        _goal(f"int8 within 1 point of float ({best})", best_float - best_int8, 0.01, best_float - best_int8 <= 0.01),
        _goal("factorized int8 >= 16% faster than the unfactorized int8", speedup, 0.16, speedup >= 0.16),
        _goal("factorized int8 within 1 point of the unfactorized int8", best_int8 - factorized, 0.01,
              best_int8 - factorized <= 0.01),
    ]
    return {"goals": goal_list, "best_student": best, "teacher_top1": teacher_top1, "top1": top1,
            "latency_ms_median": latency, "images": images or {}, "stage_seconds": stage_seconds or {}}


def markdown(summary: dict) -> str:
    """The goals as a Markdown section."""
    lines = ["", "## Demo goals", ""]
    if summary.get("teacher_top1") is not None:
        lines.append(f"Teacher top-1 on the test set: {100 * summary['teacher_top1']:.2f}%. "
                     f"Images: {summary.get('images')}. Best student: {summary['best_student']}.")
        lines.append("")
    lines += ["| goal | measured | target | met |", "| --- | --- | --- | --- |"]
    for goal in summary["goals"]:
        lines.append(f"| {goal['goal']} | {goal['value']:+.4f} | {goal['target']:+.4f} | "
                     f"{'yes' if goal['met'] else '**no**'} |")
    if summary.get("stage_seconds"):
        lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in summary["stage_seconds"].items())]
    return "\n".join(lines) + "\n"


def append_to_report(report_dir: str, summary: dict) -> None:
    """Adds the goals to report.md and report.json (key "demo") in `report_dir`."""
    with open(os.path.join(report_dir, "report.md"), "a", encoding="utf-8") as handle:
        handle.write(markdown(summary))
    json_path = os.path.join(report_dir, "report.json")
    with open(json_path, encoding="utf-8") as handle:
        report = json.load(handle)
    report["demo"] = summary
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
