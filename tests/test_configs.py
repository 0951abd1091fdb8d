"""configs/: every recipe builds, its jobs' configs are valid, and their command lines parse back to them."""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags

import configs
from benchmark.job import BenchmarkConfig
from compress.factorize_job import JobConfig
from compress.finetune import FinetuneConfig
from compress.quantize_job import QuantizeConfig
from configs import demo as demo_config
from configs.recipe import DataPart, Recipe, RecipeError, StudentRun
from distillery import cli
from pipelines.extraction import ExtractConfig
from trainer.train_config import TrainConfig

CLUSTER_RECIPES = [name for name in configs.RECIPES if name != "demo"]


def _round_trip(config, config_class, **values):
    """The config rebuilt from its own command line, parsed by flags defined from `config_class`."""
    flag_values = flags.FlagValues()
    cli.define_flags(config_class, flag_values=flag_values, module_name="test", skip=tuple(values))
    flag_values(["prog", *cli.to_flags(config)])
    return cli.from_flags(config_class, flag_values=flag_values, **values)


@pytest.mark.parametrize("name", configs.RECIPES)
@pytest.mark.parametrize("runlocal", [False, True])
def test_every_recipe_builds_and_its_docstring_gives_a_command(name, runlocal):
    config = configs.get(name, runlocal=runlocal)
    assert config is not None
    module_doc = __import__(f"configs.{name}", fromlist=["get_config"]).__doc__
    assert any(command in module_doc for command in ("python ", "make demo", "distillery-")), name


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match="known: demo, imagenet, imagenet_openimages"):
        configs.get("resnet")


def test_demo_runlocal_is_the_tiny_preset_and_smaller_everywhere_that_costs_time():
    full, tiny = demo_config.get_config(), demo_config.get_config(runlocal=True)
    assert (full, tiny) == (demo_config.FULL, demo_config.TINY)
    for field in ("labelled", "unlabeled", "test", "teacher_epochs", "train_steps", "train_steps_unlabeled",
                  "factorize_final_steps", "calibration_steps", "benchmark_runs", "benchmark_rounds"):
        assert getattr(tiny, field) < getattr(full, field), field


@pytest.mark.parametrize("name", CLUSTER_RECIPES)
@pytest.mark.parametrize("runlocal", [False, True])
def test_every_job_of_a_cluster_recipe_is_valid_and_its_command_line_builds_it_back(name, runlocal):
    recipe = configs.get(name, runlocal=runlocal)
    for part in recipe.parts:
        extract = recipe.extract_config(part.name, f"/out/{part.name}", f"/out/{part.name}.dead.jsonl")
        extract.validate()
        assert extract.views == part.views and extract.teachers == recipe.teachers
        assert _round_trip(extract, ExtractConfig) == extract
    for student in recipe.students:
        train = recipe.train_config(student.name, "/out/labelled-*", "/out/eval-*", f"/m/{student.name}")
        assert (train.alpha, train.temperature) == (student.alpha, student.temperature)
        assert train.batch_size > 0 and train.steps > 0
        assert _round_trip(train, TrainConfig) == train
    job = recipe.factorize_config("/m/distilled/student.keras", "/out/labelled-*", "/m/f.keras", "/out/eval-*", 2.0)
    assert job.tuning.temperature == 2.0 and job.tuning.train_pattern == job.train_pattern
    assert _round_trip(job, JobConfig) == dataclasses.replace(job, tuning=None)
    assert _round_trip(job.tuning, FinetuneConfig, train_pattern=job.train_pattern) == job.tuning
    quantize = recipe.quantize_config("/m/f.keras", "/t/f_int8.tflite", "/out/labelled-*")
    assert _round_trip(quantize, QuantizeConfig) == quantize
    report = recipe.benchmark_config("/r", "/out/eval-*")
    assert _round_trip(report, BenchmarkConfig) == report


def test_the_full_imagenet_recipe_is_the_published_one():
    recipe = configs.get("imagenet")
    labelled = recipe.extract_config("labelled", "/o", "/d")
    assert (labelled.source, labelled.views, labelled.top_k, labelled.logit_dtype) == (
        "tfds:imagenet2012:train", 10, 10, "float16")
    train = recipe.train_config("distilled", "/o-*", None, "/m")
    assert (train.student, train.width, train.image_size) == ("mobilenet_v1", 0.25, 128)
    # 100 epochs of ImageNet's 1,281,167 training images at the global batch.
    assert train.steps == 100 * 1_281_167 // train.batch_size
    with_unlabeled = configs.get("imagenet_openimages")
    assert with_unlabeled.part("unlabeled").source == "tfds:open_images_v4:train"
    assert with_unlabeled.student("distilled_unlabeled").parts == ("labelled", "unlabeled")


def _recipe(**changes) -> Recipe:
    values = dict(name="t", teachers=("builtin:mobilenet_v2_imagenet",),
                  parts=(DataPart("labelled", "folder:/d", 2), DataPart("eval", "folder:/e", 1)),
                  eval_part="eval", students=(StudentRun("s", ("labelled",), 0.5, 4.0),))
    return Recipe(**{**values, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"train": {"stpes": 10}}, r"train settings \['stpes'\]"),
    ({"extract": {"source": "x"}}, r"extract settings \['source'\]"),  # the recipe's parts decide it
    ({"students": (StudentRun("s", ("missing",), 0.5, 4.0),)}, "unknown parts"),
    ({"eval_part": "test"}, "eval_part 'test'"),
    ({"teachers": ()}, "no teacher"),
])
def test_a_recipe_that_cannot_run_fails_when_built_naming_the_setting(changes, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(**changes)
