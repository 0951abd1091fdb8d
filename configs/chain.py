"""The chain as data: a recipe and the paths a run writes to give the ordered stages, each a console script and
its typed config.

One definition of what runs with which settings, for `make demo` (demo/run.py turns each stage into its
command line with `arguments`, i.e. `cli.to_flags` of its config) and for the Kubeflow pipeline
(pipelines_kfp/ calls each job's library `run` with the same configs, on its artifacts' paths). In order:

    extract every part -> train every student -> quantize each student to int8 -> factorize the best one
    -> quantize it to float32 (the reference) and the factorized one to int8 -> benchmark them all

The stage builders take explicit paths (the pipeline's artifacts); `ChainPaths` is the folder layout of a
run in one directory (the demo's), and `stages` the whole list in that layout:

    python -c "import configs; from configs import chain; print(*chain.command_lines(configs.get_recipe('imagenet'), \
chain.ChainPaths('gs://B/run1'), best='distilled'), sep='\\n')"
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from compress.factorize_job import JobConfig
from compress.finetune import FinetuneConfig
from compress.quantize_job import QuantizeConfig
from configs.recipe import Recipe
from distillery import cli

FACTORIZED = "factorized"  # the name of the factorized best student among the chain's models
REFERENCE_MODE = "float32"  # the best student is also converted to float32: int8's reference


@dataclasses.dataclass(frozen=True)
class Stage:
    """One job of the chain: a label (the timings' and the pipeline's task name), the console script, its
    typed config and, for the benchmark, the .tflite files it measures (its positional arguments)."""

    label: str
    command: str
    config: Any
    models: tuple[str, ...] = ()


def arguments(stage: Stage, first: Mapping[type, Sequence[str]] | None = None) -> list[str]:
    """The stage's command line after the console script: the models, then `cli.to_flags` of its config (and
    of the factorize job's fine-tuning settings). `first` maps a config class to the fields written first,
    even at their defaults (`cli.to_flags`)."""
    first = first or {}
    config = stage.config
    argv = cli.to_flags(config, first=first.get(type(config), ()))
    if isinstance(config, JobConfig) and config.tuning is not None:
        # distillery-factorize sets the fine-tuning's records from its own --train.
        argv += cli.to_flags(config.tuning, first=first.get(FinetuneConfig, ()), skip=("train_pattern",))
    return [*stage.models, *argv]


def joined(records: Mapping[str, str], parts: Sequence[str]) -> str:
    """The records of several parts as one --train value (comma-separated; every reader accepts it)."""
    return ",".join(records[part] for part in parts)


def extract_stage(recipe: Recipe, part: str, output: str, dead_letter: str) -> Stage:
    """The extraction of one data part into the record prefix `output`."""
    return Stage(f"extract {part}", "distillery-extract", recipe.extract_config(part, output, dead_letter))


def train_stage(recipe: Recipe, student: str, records: Mapping[str, str], model_dir: str) -> Stage:
    """One student's training on its parts' records (`records`: part name -> a glob or a summary file),
    evaluated on the recipe's evaluation part."""
    config = recipe.train_config(student, joined(records, recipe.student(student).parts),
                                 records[recipe.eval_part], model_dir)
    return Stage(f"train {student}", "distillery-train", config)


def quantize_stage(recipe: Recipe, name: str, model: str, output: str, records: Mapping[str, str],
                   mode: str = "int8") -> Stage:
    """The conversion of one model: int8 with the recipe's settings, calibrated on the first training part's
    records; any other mode (the float32 reference) with the job's defaults."""
    if mode == "int8":
        config = recipe.quantize_config(model, output, records[recipe.training_parts()[0]])
    else:
        config = QuantizeConfig(model=model, output=output, mode=mode)
    return Stage(f"quantize {name}" + ("" if mode == "int8" else f" {mode}"), "distillery-quantize", config)


def factorize_stage(recipe: Recipe, best: str, model: str, records: Mapping[str, str], output: str) -> Stage:
    """The factorize job of the best student, fine-tuned on every training part at that student's temperature."""
    config = recipe.factorize_config(model, joined(records, recipe.training_parts()), output,
                                     records[recipe.eval_part], recipe.student(best).temperature)
    return Stage("factorize", "distillery-factorize", config)


def benchmark_stage(recipe: Recipe, models: Sequence[str], records: Mapping[str, str], report_dir: str) -> Stage:
    """The benchmark of every converted model on the evaluation part."""
    return Stage("benchmark", "distillery-benchmark", recipe.benchmark_config(report_dir, records[recipe.eval_part]),
                 models=tuple(models))


def benchmarked(recipe: Recipe, best: str) -> list[tuple[str, str]]:
    """(model name, mode) of every .tflite the benchmark measures, in its order: each student in int8, the
    factorized one in int8, the best one in float32."""
    return [*((student.name, "int8") for student in recipe.students), (FACTORIZED, "int8"), (best, REFERENCE_MODE)]


def training_order(recipe: Recipe) -> list[str]:
    """The students, the longest training first (it starts first where they run side by side), then in the
    recipe's order."""
    steps = {student.name: recipe.train_config(student.name, "", None, "").steps for student in recipe.students}
    return sorted(steps, key=lambda name: -steps[name])


def best_student(recipe: Recipe, top1: Mapping[str, float]) -> str:
    """The student with the highest top-1 on the evaluation part; a tie goes to the first in `training_order`."""
    return max(training_order(recipe), key=lambda name: top1[name])


@dataclasses.dataclass(frozen=True)
class ChainPaths:
    """Where a run of the chain in one folder (local or gs://) writes each stage's outputs."""

    output_dir: str

    def path(self, *parts: str) -> str:
        return posixpath.join(self.output_dir, *parts)

    def records_prefix(self, part: str) -> str:
        return self.path("soft", part)

    def records(self, part: str) -> str:
        """The glob of a part's record files (PREFIX-*), as the readers take it."""
        return self.records_prefix(part) + "-*"

    def records_of(self, recipe: Recipe) -> dict[str, str]:
        return {part.name: self.records(part.name) for part in recipe.parts}

    def dead_letter(self, part: str) -> str:
        return self.path("dead_letters", f"{part}.jsonl")

    def model_dir(self, student: str) -> str:
        return self.path("students", student)

    def model(self, name: str) -> str:
        """A student's .keras file, or the factorized one's."""
        return self.path("students", f"{FACTORIZED}.keras") if name == FACTORIZED else \
            posixpath.join(self.model_dir(name), "student.keras")

    def tflite(self, name: str, mode: str) -> str:
        return self.path("tflite", f"{name}_{mode}.tflite")


def extract_stages(recipe: Recipe, paths: ChainPaths) -> list[Stage]:
    return [extract_stage(recipe, part.name, paths.records_prefix(part.name), paths.dead_letter(part.name))
            for part in recipe.parts]


def train_stages(recipe: Recipe, paths: ChainPaths) -> list[Stage]:
    """Every student's training, the longest first."""
    records = paths.records_of(recipe)
    return [train_stage(recipe, name, records, paths.model_dir(name)) for name in training_order(recipe)]


def quantize_at(recipe: Recipe, paths: ChainPaths, name: str, mode: str = "int8") -> Stage:
    return quantize_stage(recipe, name, paths.model(name), paths.tflite(name, mode), paths.records_of(recipe), mode)


def factorize_at(recipe: Recipe, paths: ChainPaths, best: str) -> Stage:
    return factorize_stage(recipe, best, paths.model(best), paths.records_of(recipe), paths.model(FACTORIZED))


def benchmark_at(recipe: Recipe, paths: ChainPaths, best: str) -> Stage:
    models = [paths.tflite(name, mode) for name, mode in benchmarked(recipe, best)]
    return benchmark_stage(recipe, models, paths.records_of(recipe), paths.output_dir)


def stages(recipe: Recipe, paths: ChainPaths, best: str) -> list[Stage]:
    """The whole chain in order, for a given best student (known once the students are trained)."""
    return [*extract_stages(recipe, paths), *train_stages(recipe, paths),
            *(quantize_at(recipe, paths, student.name) for student in recipe.students),
            factorize_at(recipe, paths, best), quantize_at(recipe, paths, best, REFERENCE_MODE),
            quantize_at(recipe, paths, FACTORIZED), benchmark_at(recipe, paths, best)]


def command_lines(recipe: Recipe, paths: ChainPaths, best: str) -> list[str]:
    """Every stage as the command a user would type."""
    return [" ".join([stage.command, *arguments(stage)]) for stage in stages(recipe, paths, best)]
