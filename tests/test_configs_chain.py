"""configs/chain.py: one list of stages for the demo and the pipeline; the tiny demo's command lines are the ones
it logged before the chain existed, and every stage's command line builds its config back."""

from __future__ import annotations

import pathlib

import pytest

import configs
from configs import chain
from configs import demo as demo_config
from configs.recipe import DataPart, Recipe, RecipeError, StudentRun
from demo import run as demo_run

# `python -m demo.run --runlocal --output_dir=OUT` logged exactly these commands (sorted; console scripts without
# their folder, environment variables left out) when its command lines were still written by hand, plus
# --overwrite on the extractions and the trainings, so that a second `make demo` into the same folder starts over.
TINY_DEMO_COMMANDS = pathlib.Path(__file__).parent / "golden" / "demo_tiny_commands.txt"


def test_the_tiny_demo_runs_the_commands_it_always_ran():
    paths = chain.ChainPaths("OUT")
    recipe = demo_config.recipe(demo_config.TINY, data_dir=paths.path("data"), teacher=paths.path("teacher.keras"))
    lines = [" ".join([command.name, *command.args])
             for command in map(demo_run.command, chain.stages(recipe, paths, best="distilled_unlabeled"))]
    assert sorted(lines) == TINY_DEMO_COMMANDS.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", configs.RECIPES)
def test_every_recipe_gives_the_whole_chain_in_order(name):
    recipe = configs.get_recipe(name, runlocal=True)
    best = recipe.students[-1].name
    stages = chain.stages(recipe, chain.ChainPaths("gs://b/run"), best)
    labels = [stage.label for stage in stages]
    assert len(set(labels)) == len(labels), labels
    students = [student.name for student in recipe.students]
    assert labels == ([f"extract {part.name}" for part in recipe.parts] + [f"train {s}" for s in chain.training_order(recipe)]
                      + [f"quantize {s}" for s in students]
                      + ["factorize", f"quantize {best} float32", "quantize factorized", "benchmark"])
    benchmark = stages[-1]
    assert benchmark.models == tuple(f"gs://b/run/tflite/{model}_{mode}.tflite" for model, mode in
                                     [*((s, "int8") for s in students), ("factorized", "int8"), (best, "float32")])
    # Every stage reads what an earlier one wrote: records from the extractions, models from the trainings.
    factorize = stages[labels.index("factorize")].config
    assert factorize.model_path == f"gs://b/run/students/{best}/student.keras"
    assert factorize.tuning.temperature == recipe.student(best).temperature
    assert factorize.train_pattern == ",".join(f"gs://b/run/soft/{part}-*" for part in recipe.training_parts())
    reference = stages[labels.index(f"quantize {best} float32")].config
    assert (reference.mode, reference.calibration) == ("float32", None)
    assert all(line.startswith("distillery-") for line in chain.command_lines(recipe, chain.ChainPaths("/r"), best))


def test_the_best_student_is_the_highest_top1_and_a_tie_goes_to_the_longest_training():
    recipe = configs.get_recipe("demo", runlocal=True)
    assert chain.training_order(recipe) == ["distilled_unlabeled", "hard", "distilled"]
    assert chain.best_student(recipe, {"hard": 0.3, "distilled": 0.5, "distilled_unlabeled": 0.4}) == "distilled"
    assert chain.best_student(recipe, {"hard": 0.5, "distilled": 0.5, "distilled_unlabeled": 0.5}) == \
        "distilled_unlabeled"
    assert chain.best_student(recipe, {"hard": 0.5, "distilled": 0.5, "distilled_unlabeled": 0.1}) == "hard"


def test_a_student_may_override_the_recipe_training_settings_but_only_with_real_ones():
    parts = (DataPart("labelled", "idx:/d:train", views=1), DataPart("eval", "idx:/d:test", views=1))
    recipe = Recipe("r", ("t.keras",), parts, "eval", (StudentRun("s", ("labelled",), 0.5, 2.0, train={"steps": 7}),),
                    train={"steps": 3, "batch_size": 8})
    config = recipe.train_config("s", "L", "E", "/m")
    assert (config.steps, config.batch_size) == (7, 8)
    with pytest.raises(RecipeError, match="student s's train settings \\['stepz'\\]"):
        Recipe("r", ("t.keras",), parts, "eval", (StudentRun("s", ("labelled",), 0.5, 2.0, train={"stepz": 7}),))
    with pytest.raises(RecipeError, match="no data part to train on"):
        Recipe("r", ("t.keras",), parts[1:], "eval", ())
