"""What each pipeline step does: plain functions of the recipe and of artifacts (objects with .path, .uri and
.metadata, as KFP hands them to a component), each running one stage of configs/chain.py through the job's
library (`extraction.run`, `loop.train`, `quantize_job.run`, `factorize_job.run`, `job.run`).

components.py is one call into here per component. Imports are inside the functions, so that a step loads
only what it runs (the gate no TensorFlow at all).

Artifact layout: a records Dataset is a folder holding PART-*.tfrecord, PART.summary.json (what every reader
takes, named in its metadata) and PART.dead_letters.jsonl; a Model is a folder holding one .keras or .tflite
file (its metadata's `file`) and, for a student, the trainer's summary.json.

    python -c "from pipelines_kfp import steps; print(steps.load_recipe('demo', runlocal=True).students)"
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import shutil
from collections.abc import Sequence
from typing import Any

DEMO = "demo"  # the recipe whose data and teacher are steps of the pipeline too (demo/data.py, demo/teacher.py)
SUMMARY_SUFFIX = ".summary.json"
LOCAL = "local"  # --training: the student trains inside its own step


def load_recipe(name: str, runlocal: bool, data_dir: str | None = None, teacher: str | None = None) -> Any:
    """The Recipe of `name`; the demo's reads its parts from `data_dir` and its teacher from `teacher` (the
    artifacts of its data and teacher steps) when given."""
    import configs  # pylint: disable=import-outside-toplevel

    if name == DEMO:
        from configs import demo  # pylint: disable=import-outside-toplevel

        return demo.recipe(configs.get(DEMO, runlocal), data_dir or "data", teacher or "teacher.keras")
    return configs.get_recipe(name, runlocal)


def data_location(artifact: Any) -> str:
    """Where jobs read and write an artifact's bulk data: its gs:// URI on Cloud Storage (Dataflow workers and
    training pods reach it, readers stream it), else its local path."""
    return artifact.uri if artifact.uri.startswith("gs://") else artifact.path


def _make_folder(path: str) -> None:
    if "://" not in path:
        os.makedirs(path, exist_ok=True)


def _log_metrics(metrics: Any, values: dict) -> None:
    """Logs `values` on a Metrics artifact and writes them to its file too: a Metrics output with no file counts
    as missing, and kfp.local's cache then reruns its step every time."""
    for name, value in values.items():
        metrics.log_metric(name, value)
    os.makedirs(os.path.dirname(metrics.path) or ".", exist_ok=True)
    with open(metrics.path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, sort_keys=True)


def model_file(model: Any) -> str:
    """The .keras or .tflite file of a Model artifact."""
    return os.path.join(model.path, model.metadata["file"])


def records_by_part(*datasets: Any) -> dict[str, str]:
    """{part name: its extraction summary} of the records Datasets given (None ones skipped)."""
    return {dataset.metadata["part"]: posixpath.join(data_location(dataset), dataset.metadata["summary"])
            for dataset in datasets if dataset is not None}


def split_data(recipe: str, runlocal: bool, idx_dir: str, data: Any) -> None:
    """The demo's data step: Fashion-MNIST split into labelled / unlabeled / test TFRecords (demo/data.py)."""
    import configs  # pylint: disable=import-outside-toplevel
    from demo import data as demo_data  # pylint: disable=import-outside-toplevel

    cfg = configs.get(recipe, runlocal)
    splits = demo_data.write_splits(data.path, cfg.labelled, cfg.unlabeled, cfg.test, idx_dir)
    data.metadata.update(splits.counts)


def train_teacher(recipe: str, runlocal: bool, data: Any, teacher: Any) -> None:
    """The demo's teacher step: the teacher CNN trained on the labelled part (demo/teacher.py)."""
    import configs  # pylint: disable=import-outside-toplevel
    from demo import teacher as demo_teacher  # pylint: disable=import-outside-toplevel

    os.makedirs(teacher.path, exist_ok=True)
    demo_teacher.train_and_save(configs.get(recipe, runlocal), os.path.join(data.path, "labelled.tfrecord"),
                                os.path.join(teacher.path, "teacher.keras"))
    teacher.metadata["file"] = "teacher.keras"


def extract(recipe: str, runlocal: bool, part: str, beam_options: str, records: Any, data: Any = None,
            teacher: Any = None) -> dict:
    """One part's soft labels with the Beam job, on the runner `beam_options` names (none: FnApiRunner here)."""
    from configs import chain  # pylint: disable=import-outside-toplevel
    from pipelines import extraction  # pylint: disable=import-outside-toplevel

    chosen = load_recipe(recipe, runlocal, data.path if data is not None else None,
                         model_file(teacher) if teacher is not None else None)
    folder = data_location(records)
    _make_folder(folder)
    stage = chain.extract_stage(chosen, part, posixpath.join(folder, part),
                                posixpath.join(folder, f"{part}.dead_letters.jsonl"))
    summary = extraction.run(stage.config, shlex.split(beam_options)).summary
    counters = summary["counters"]
    records.metadata.update(part=part, summary=f"{part}{SUMMARY_SUFFIX}", dead_letters=f"{part}.dead_letters.jsonl",
                            read=counters["read"], written=counters["written"], dead_letter_count=counters["dead_letters"],
                            balanced=summary["balanced"], views=summary["views"],
                            **({"teacher_top1": summary["teacher_top1"]} if "teacher_top1" in summary else {}))
    return summary


def train(recipe: str, runlocal: bool, student: str, records: dict[str, str], model: Any, metrics: Any,
          training: str = LOCAL, namespace: str = "distillery", overlay: str = "small", train_image: str = "",
          timeout_s: float = 86400.0) -> dict:
    """One student: trained inside this step (`training="local"`), or by a JobSet / TFJob created through the
    Kubernetes API that writes to the Model's gs:// URI while this step waits for it."""
    from configs import chain  # pylint: disable=import-outside-toplevel
    from demo import goals  # pylint: disable=import-outside-toplevel

    chosen = load_recipe(recipe, runlocal)
    if training == LOCAL:
        from trainer import loop  # pylint: disable=import-outside-toplevel

        os.makedirs(model.path, exist_ok=True)
        summary = loop.train(chain.train_stage(chosen, student, records, model.path).config, loop.make_strategy("default"))
    else:
        summary = train_on_cluster(chain.train_stage(chosen, student, records, model.uri), student, training, namespace,
                                   overlay, train_image, timeout_s)
    top1 = goals.top1_of_summary(summary)
    model.metadata.update(student=student, file="student.keras", top1=top1, steps=summary["steps"])
    _log_metrics(metrics, {"top1": top1, "steps": summary["steps"]})
    return summary


def train_on_cluster(stage: Any, student: str, training: str, namespace: str, overlay: str, train_image: str,
                     timeout_s: float) -> dict:
    """Creates the student's JobSet / TFJob (pipelines_kfp/training_job.py), waits for it, returns its summary."""
    from configs import chain  # pylint: disable=import-outside-toplevel
    from pipelines_kfp import kubernetes_job, training_job  # pylint: disable=import-outside-toplevel

    model_dir = stage.config.model_dir
    if not model_dir.startswith("gs://"):
        raise ValueError(f"--training={training}: the trainer pods write the model to its artifact's URI, which must "
                         f"be on Cloud Storage (a gs:// pipeline root), not {model_dir}")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from kubernetes import client, config  # pylint: disable=import-outside-toplevel

    config.load_incluster_config()
    obj = training_job.training_object(training, training_job.object_name(student, model_dir), namespace,
                                       chain.arguments(stage), overlay, train_image)
    kubernetes_job.apply_and_wait(client.CustomObjectsApi(), obj, namespace, timeout_s)
    with tf.io.gfile.GFile(posixpath.join(model_dir, "summary.json")) as handle:
        return json.load(handle)


def quantize(recipe: str, runlocal: bool, name: str, mode: str, model: Any, labelled: Any, tflite: Any) -> int:
    """One model converted to `mode` (int8: calibrated on the labelled part's records)."""
    from compress import quantize_job  # pylint: disable=import-outside-toplevel
    from configs import chain  # pylint: disable=import-outside-toplevel

    os.makedirs(tflite.path, exist_ok=True)
    file_name = f"{name}_{mode}.tflite"
    stage = chain.quantize_stage(load_recipe(recipe, runlocal), name, model_file(model),
                                 os.path.join(tflite.path, file_name), records_by_part(labelled), mode)
    size = quantize_job.run(stage.config)
    tflite.metadata.update(name=f"{name}_{mode}", file=file_name, student=name, mode=mode, size_bytes=size)
    return size


def choose_best(recipe: str, runlocal: bool, students: Sequence[Any], best: Any) -> str:
    """The best student by top-1 (configs/chain.py's rule, as the demo's), copied into the `best` Model."""
    from configs import chain  # pylint: disable=import-outside-toplevel

    top1 = {model.metadata["student"]: model.metadata["top1"] for model in students}
    name = chain.best_student(load_recipe(recipe, runlocal), top1)
    chosen = next(model for model in students if model.metadata["student"] == name)
    os.makedirs(best.path, exist_ok=True)
    for file_name in (chosen.metadata["file"], "summary.json"):
        shutil.copy2(os.path.join(chosen.path, file_name), os.path.join(best.path, file_name))
    best.metadata.update({**chosen.metadata, "top1_by_student": top1})
    return name


def factorize(recipe: str, runlocal: bool, best: Any, records: dict[str, str], factorized: Any) -> dict:
    """The best student factorized and fine-tuned at its own temperature."""
    from compress import factorize_job  # pylint: disable=import-outside-toplevel
    from configs import chain  # pylint: disable=import-outside-toplevel

    os.makedirs(factorized.path, exist_ok=True)
    student = best.metadata["student"]
    stage = chain.factorize_stage(load_recipe(recipe, runlocal), student, model_file(best), records,
                                  os.path.join(factorized.path, f"{chain.FACTORIZED}.keras"))
    report = factorize_job.run(stage.config)
    factorized.metadata.update(student=chain.FACTORIZED, file=f"{chain.FACTORIZED}.keras", factorized_from=student,
                               layers=len(report["layers"]), top1=report.get("top1"))
    return report


def benchmark(recipe: str, runlocal: bool, best: str, models: Sequence[Any], evaluation: Any, report: Any,
              report_markdown: Any, metrics: Any) -> dict:
    """Every converted model measured on the evaluation part: report.json, report.md and the PNGs in `report`."""
    from benchmark import job  # pylint: disable=import-outside-toplevel
    from configs import chain  # pylint: disable=import-outside-toplevel

    chosen = load_recipe(recipe, runlocal)
    files = {model.metadata["name"]: model_file(model) for model in models}
    os.makedirs(report.path, exist_ok=True)
    stage = chain.benchmark_stage(chosen, [files[f"{name}_{mode}"] for name, mode in chain.benchmarked(chosen, best)],
                                  records_by_part(evaluation), report.path)
    job.run(stage.config, list(stage.models))
    shutil.copy2(os.path.join(report.path, "report.md"), report_markdown.path)
    with open(os.path.join(report.path, "report.json"), encoding="utf-8") as handle:
        written = json.load(handle)
    values = {}
    for entry in written["models"]:
        name = os.path.splitext(os.path.basename(entry["model"]))[0]
        if entry.get("top1") is not None:
            values[f"{name}_top1"] = entry["top1"]
        values[f"{name}_latency_ms"] = entry["latency_ms"]["median"]
    _log_metrics(metrics, values)
    return written


def gate(report: Any, candidate: Any, reference: Any, max_int8_drop: float, latency_budget_ms: float, blessed: Any,
         verdict_markdown: Any) -> dict:
    """The quality gate (pipelines_kfp/gate.py): blesses `candidate` into `blessed` (its .tflite, the report
    and verdict.json; metadata `blessed: true` and the numbers), or raises GateError naming every reason.
    verdict.json is written either way."""
    from pipelines_kfp import gate as quality_gate  # pylint: disable=import-outside-toplevel

    with open(os.path.join(report.path, "report.json"), encoding="utf-8") as handle:
        verdict = quality_gate.judge(json.load(handle), candidate.metadata["name"], reference.metadata["name"],
                                     max_int8_drop, latency_budget_ms)
    os.makedirs(blessed.path, exist_ok=True)
    with open(os.path.join(blessed.path, "verdict.json"), "w", encoding="utf-8") as handle:
        json.dump(verdict.metadata(), handle, indent=2)
    with open(verdict_markdown.path, "w", encoding="utf-8") as handle:
        handle.write(f"# Quality gate\n\n{verdict.message()}\n")
    print(verdict.message(), flush=True)
    if not verdict.blessed:
        raise quality_gate.GateError(verdict.message())
    file_name = candidate.metadata["file"]
    shutil.copy2(model_file(candidate), os.path.join(blessed.path, file_name))
    for name in ("report.json", "report.md"):
        shutil.copy2(os.path.join(report.path, name), os.path.join(blessed.path, name))
    blessed.metadata.update({**verdict.metadata(), "file": file_name})
    return verdict.metadata()
