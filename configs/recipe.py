"""A cluster recipe: the data parts, the teacher, the students and every job's settings, as one typed object.

A recipe holds, per job, only the settings it changes from that job's defaults (keys of the job's config
dataclass: ExtractConfig, TrainConfig, JobConfig + FinetuneConfig, QuantizeConfig, BenchmarkConfig), and
checks them against those dataclasses when it is built, so a misspelt key fails at once and no default is
written twice. The `*_config` methods give the jobs' typed configs for given paths; `distillery.cli.to_flags`
of one is its command line.

    python -c "import configs; r = configs.get('imagenet'); print(r.train_config('distilled', 'in-*', None, '/tmp/m'))"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from benchmark.job import BenchmarkConfig
from compress.factorize_job import JobConfig
from compress.finetune import FinetuneConfig
from compress.quantize_job import QuantizeConfig
from pipelines.extraction import ExtractConfig
from trainer.train_config import TrainConfig


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the recipe and the setting."""


@dataclasses.dataclass(frozen=True)
class DataPart:
    """One extraction: where its images come from and how many views of each the teacher labels."""

    name: str                  # labelled, unlabeled or eval: the part's role in the recipe
    source: str                # a source spec (docs/extract.md), e.g. tfds:imagenet2012:train
    views: int                 # stored views per image (1 = the centre crop: what evaluation uses)
    max_examples: int | None = None  # a shrunk run (runlocal) reads only the first N inputs


@dataclasses.dataclass(frozen=True)
class StudentRun:
    """One student of the recipe: the parts it trains on, its loss, and the training settings that differ
    from the recipe's (`train`, e.g. more steps for a student that sees more images)."""

    name: str
    parts: tuple[str, ...]     # names of DataParts; their records are concatenated
    alpha: float               # weight of the hard-label term (1.0 = hard labels only)
    temperature: float
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig settings over Recipe.train


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything a run of the chain needs but the paths it writes to."""

    name: str
    teachers: tuple[str, ...]
    parts: tuple[DataPart, ...]
    eval_part: str
    students: tuple[StudentRun, ...]
    extract: Mapping[str, Any] = dataclasses.field(default_factory=dict)    # ExtractConfig settings of every part
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)      # TrainConfig settings of every student
    factorize: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # JobConfig settings
    finetune: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # FinetuneConfig settings
    quantize: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # QuantizeConfig settings (int8)
    benchmark: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # BenchmarkConfig settings

    def __post_init__(self) -> None:
        # Settings the recipe's own structure decides: a job's mapping may not set them.
        decided = {"extract": ("source", "teachers", "output", "dead_letter", "views", "max_examples"),
                   "train": ("train_pattern", "model_dir", "eval_pattern", "alpha", "temperature", "teacher"),
                   "factorize": ("model_path", "train_pattern", "output_path", "eval_pattern", "tuning"),
                   "finetune": ("train_pattern",),
                   "quantize": ("model", "output", "calibration"),
                   "benchmark": ("report_dir", "eval_pattern")}
        classes = {"extract": ExtractConfig, "train": TrainConfig, "factorize": JobConfig,
                   "finetune": FinetuneConfig, "quantize": QuantizeConfig, "benchmark": BenchmarkConfig}
        for job, config_class in classes.items():
            allowed = {field.name for field in dataclasses.fields(config_class)} - set(decided[job])
            settings = [(job, getattr(self, job))]
            if job == "train":
                settings += [(f"student {student.name}'s train", student.train) for student in self.students]
            for what, mapping in settings:
                unknown = sorted(set(mapping) - allowed)
                if unknown:
                    raise RecipeError(f"recipe {self.name}: {what} settings {unknown} are not settings of "
                                      f"{config_class.__name__} a recipe may set (allowed: {sorted(allowed)})")
        names = [part.name for part in self.parts]
        if len(set(names)) != len(names):
            raise RecipeError(f"recipe {self.name}: data part names repeat: {names}")
        if self.eval_part not in names:
            raise RecipeError(f"recipe {self.name}: eval_part {self.eval_part!r} is not a data part ({names})")
        for student in self.students:
            missing = [part for part in student.parts if part not in names]
            if missing or not student.parts:
                raise RecipeError(f"recipe {self.name}: student {student.name} trains on unknown parts {missing} "
                                  f"(data parts: {names})")
        if not self.teachers:
            raise RecipeError(f"recipe {self.name}: no teacher")
        if not self.training_parts():
            raise RecipeError(f"recipe {self.name}: no data part to train on besides eval_part {self.eval_part!r}")

    def part(self, name: str) -> DataPart:
        """The data part called `name`."""
        for part in self.parts:
            if part.name == name:
                return part
        raise RecipeError(f"recipe {self.name}: no data part {name!r}")

    def student(self, name: str) -> StudentRun:
        """The student called `name`."""
        for student in self.students:
            if student.name == name:
                return student
        raise RecipeError(f"recipe {self.name}: no student {name!r}")

    def training_parts(self) -> tuple[str, ...]:
        """The parts other than the evaluation one, in order: what the factorize job fine-tunes on. The
        first (the labelled part) also calibrates the int8 conversions."""
        return tuple(part.name for part in self.parts if part.name != self.eval_part)

    def extract_config(self, part_name: str, output: str, dead_letter: str) -> ExtractConfig:
        """The extraction of one data part into `output` (a record prefix)."""
        part = self.part(part_name)
        return ExtractConfig(source=part.source, teachers=self.teachers, output=output, dead_letter=dead_letter,
                             views=part.views, max_examples=part.max_examples, **self.extract)

    def train_config(self, student_name: str, train_pattern: str, eval_pattern: str | None,
                     model_dir: str) -> TrainConfig:
        """The training run of one student; `train_pattern` are the records of its parts."""
        student = self.student(student_name)
        return TrainConfig(train_pattern=train_pattern, model_dir=model_dir, eval_pattern=eval_pattern,
                           alpha=student.alpha, temperature=student.temperature, **{**self.train, **student.train})

    def factorize_config(self, model_path: str, train_pattern: str, output_path: str, eval_pattern: str | None,
                         temperature: float) -> JobConfig:
        """The factorize job of the chosen student, fine-tuned at that student's temperature."""
        tuning = FinetuneConfig(train_pattern=train_pattern, **{"temperature": temperature, **self.finetune})
        return JobConfig(model_path=model_path, train_pattern=train_pattern, output_path=output_path,
                         eval_pattern=eval_pattern, tuning=tuning, **self.factorize)

    def quantize_config(self, model: str, output: str, calibration: str | None) -> QuantizeConfig:
        """The conversion of one model (int8 unless the recipe says otherwise)."""
        return QuantizeConfig(model=model, output=output, calibration=calibration, **self.quantize)

    def benchmark_config(self, report_dir: str, eval_pattern: str | None) -> BenchmarkConfig:
        """The benchmark of every converted model."""
        return BenchmarkConfig(report_dir=report_dir, eval_pattern=eval_pattern, **self.benchmark)

