"""The benchmark report: report.json, report.md and PNG plots.

report.json is `{"models": [entry, ...]}` with one entry per model (docs/design.md, "The benchmark report"): `model`,
`size_bytes`, `latency_ms` {`min`, `median`, `p90`}, `num_threads`, `runs`, `per_op_sum_ms` (when
profiled, with `per_op` rows), `top1` / `top5` (when labels exist), `teacher_agreement`, `images`
(T), `runtime_ms` (summed invoke time of the T images) and `lpirc_score` (when evaluated).
report.md holds the table of the seed team's write-up (model, size, top-1, latency, score) and the
per-op tables; `accuracy_vs_latency.png` plots every model, `per_op_<model>.png` its top ops. Every
file is written under a temporary name and renamed into place once all are written, report.json last
(distillery/atomic_files.py): a failure half-way leaves the last report as it was.

    python -c "from benchmark import report; print(report.markdown([]))"
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from benchmark import accuracy as accuracy_module  # noqa: E402
from benchmark import score  # noqa: E402
from distillery import atomic_files, op_profile  # noqa: E402
from distillery import latency as latency_module  # noqa: E402

TOP_OPS_PLOTTED = 20


def model_entry(model: str, size_bytes: int, stats: latency_module.LatencyStats, num_threads: int,
                profile: op_profile.OpProfile | None = None,
                counts: accuracy_module.EvalCounts | None = None) -> dict:
    """One model's report.json entry."""
    entry: dict = {"model": model, "size_bytes": int(size_bytes), "latency_ms": stats.as_dict(),
                   "num_threads": int(num_threads), "runs": stats.runs}
    if profile is not None:
        entry["per_op_sum_ms"] = round(profile.sum_ms, 4)
        entry["per_op_whole_model_ms"] = round(profile.whole_model_ms, 4)
        entry["per_op"] = profile.as_dicts()
    if counts is not None:
        entry["images"] = counts.images
        entry["runtime_ms"] = round(counts.runtime_ms, 3)
        if counts.labelled:
            entry["top1"], entry["top5"] = round(counts.top1, 5), round(counts.top5, 5)
            entry["labelled_images"] = counts.labelled
        if counts.images:
            entry["teacher_agreement"] = round(counts.teacher_agreement, 5)
            entry["lpirc_score"] = score.lpirc_score(counts.accuracy, counts.runtime_ms, counts.images)
            entry["lpirc_accuracy"] = "top1" if counts.labelled else "teacher_agreement"
        if counts.undecodable:
            entry["undecodable_images"] = counts.undecodable
    return entry


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown(entries: Sequence[dict], profiles: dict[str, op_profile.OpProfile] | None = None) -> str:
    """report.md: the model table and, for profiled models, the per-op tables."""
    lines = ["# Benchmark report", "",
             "| model | size (KB) | top-1 | top-5 | teacher agreement | latency median (ms) | p90 (ms) "
             "| threads | T | runtime (ms) | LPIRC score |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for entry in entries:
        score_text = f"{entry['lpirc_score']:.3e}" if "lpirc_score" in entry else "-"
        lines.append(
            f"| {os.path.basename(entry['model'])} | {entry['size_bytes'] / 1024:.1f} | {_percent(entry.get('top1'))} "
            f"| {_percent(entry.get('top5'))} | {_percent(entry.get('teacher_agreement'))} "
            f"| {entry['latency_ms']['median']:.3f} | {entry['latency_ms']['p90']:.3f} | {entry['num_threads']} "
            f"| {entry.get('images', '-')} | {entry.get('runtime_ms', '-')} | {score_text} |")
    lines += ["", "LPIRC score = accuracy / max(30 ms * T, runtime of all T images in ms); accuracy is top-1 "
              "where labels exist, else agreement with the teacher's top-1."]
    for model, profile in (profiles or {}).items():
        lines += ["", f"## Per-op latency: {os.path.basename(model)}", "", op_profile.format_table(profile)]
    return "\n".join(lines) + "\n"


def safe_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(model))[0])


def accuracy_points(entries: Sequence[dict]) -> list[tuple[float, float, str]]:
    """(median latency, accuracy: top-1, else teacher agreement, model) of the entries that have an accuracy."""
    points = [(entry["latency_ms"]["median"], entry.get("top1", entry.get("teacher_agreement")), entry["model"])
              for entry in entries]
    return [point for point in points if point[1] is not None]


def plot_accuracy_vs_latency(entries: Sequence[dict], path: str) -> bool:
    """Scatter of accuracy (top-1, else teacher agreement) against median latency; False if no accuracy."""
    points = accuracy_points(entries)
    if not points:
        return False
    figure, axes = plt.subplots(figsize=(6, 4))
    for latency_ms, accuracy, model in points:
        axes.scatter([latency_ms], [100 * accuracy])
        axes.annotate(os.path.basename(model), (latency_ms, 100 * accuracy), fontsize=8,
                      textcoords="offset points", xytext=(4, 4))
    axes.margins(0.25)  # room for the labels
    axes.set_xlabel("median latency, 1 image (ms)")
    axes.set_ylabel("top-1 (%)" if any("top1" in entry for entry in entries) else "teacher agreement (%)")
    axes.set_title("accuracy vs latency")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def plot_per_op(profile: op_profile.OpProfile, title: str, path: str, top: int = TOP_OPS_PLOTTED) -> None:
    """Horizontal bars of the `top` slowest ops (index, type, layer)."""
    rows = sorted(profile.rows, key=lambda row: row.ms, reverse=True)[:top][::-1]
    figure, axes = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.5))
    axes.barh([f"{row.index} {row.op_type} {row.layer}"[:48] for row in rows], [row.ms for row in rows])
    axes.set_xlabel("ms (single-op model, median)")
    axes.set_title(f"{title}: top {len(rows)} ops; sum {profile.sum_ms:.3f} ms, whole {profile.whole_model_ms:.3f} ms",
                   fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(entries: Sequence[dict], report_dir: str,
                 profiles: dict[str, op_profile.OpProfile] | None = None) -> dict[str, str]:
    """Writes report.json, report.md and the PNGs into `report_dir` (local or gs://); returns {what: path}.

    matplotlib and open() write local files only: for a gs:// report each file is written locally, then
    copied there with tf.io.gfile (a k8s benchmark Job's pod is gone once it exits) under its temporary
    name and renamed.
    """
    report_dir = report_dir.rstrip("/") or report_dir
    atomic_files.check_writable(report_dir, "--report_dir")
    written = {"json": f"{report_dir}/report.json", "markdown": f"{report_dir}/report.md"}
    with contextlib.ExitStack() as stack:  # exits in reverse: report.json, staged first, is renamed last
        def staged(path: str) -> str:
            return stack.enter_context(atomic_files.staged(path, local_writer=True))

        with open(staged(written["json"]), "w", encoding="utf-8") as handle:
            json.dump({"models": list(entries)}, handle, indent=2)
        with open(staged(written["markdown"]), "w", encoding="utf-8") as handle:
            handle.write(markdown(entries, profiles))
        scatter = f"{report_dir}/accuracy_vs_latency.png"
        if accuracy_points(entries):
            plot_accuracy_vs_latency(entries, staged(scatter))
            written["accuracy_vs_latency"] = scatter
        for model, profile in (profiles or {}).items():
            path = f"{report_dir}/per_op_{safe_name(model)}.png"
            plot_per_op(profile, os.path.basename(model), staged(path))
            written[f"per_op:{model}"] = path
    return written
