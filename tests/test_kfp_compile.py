"""The Kubeflow pipeline compiles to the committed IR YAML, the same bytes every time, with the structure the
task asks for: a step per stage of configs/chain.py, a ParallelFor over the students, typed artifacts,
every step cached and run in the Distillery image, nothing installed at run time.

Regenerate the golden file after a deliberate change (then review its diff):

    .venv/bin/distillery-pipeline compile --config=imagenet_openimages --output=tests/golden/kfp_imagenet_openimages.yaml
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

import configs
from configs import chain
from configs.recipe import DataPart, Recipe, StudentRun
from pipelines_kfp import pipeline, steps
from pipelines_kfp.pipeline_config import DEFAULT_IMAGE, PipelineConfig

GOLDEN = pathlib.Path(__file__).parent / "golden" / "kfp_imagenet_openimages.yaml"
REGENERATE = (".venv/bin/distillery-pipeline compile --config=imagenet_openimages "
              "--output=tests/golden/kfp_imagenet_openimages.yaml")


def compiled(tmp_path, config: PipelineConfig, name: str = "pipeline.yaml") -> str:
    return pathlib.Path(pipeline.compile_pipeline(config, str(tmp_path / name))).read_text(encoding="utf-8")


def test_the_default_recipe_compiles_to_the_committed_yaml(tmp_path):
    assert PipelineConfig().config == "imagenet_openimages"
    text = compiled(tmp_path, PipelineConfig())
    assert text == GOLDEN.read_text(encoding="utf-8"), f"the compiled pipeline changed; if on purpose: {REGENERATE}"


def tasks_of(spec: dict) -> dict:
    """{task name: task} over the root DAG and every sub-DAG (the ParallelFor body)."""
    found = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def test_the_tiny_demo_pipeline_has_every_step_typed_cached_and_in_the_image(tmp_path):
    config = PipelineConfig(config="demo", runlocal=True, image="registry.example/distillery:9-cpu")
    first, second = compiled(tmp_path, config, "a.yaml"), compiled(tmp_path, config, "b.yaml")
    assert first == second  # deterministic
    spec = yaml.safe_load(first)
    assert spec["pipelineInfo"]["name"] == "distillery-demo-runlocal"
    tasks = tasks_of(spec)
    names = sorted(task["taskInfo"]["name"] for task in tasks.values())
    assert names == sorted(["split Fashion-MNIST", "train the teacher", "extract labelled", "extract unlabeled",
                            "extract test", "students", "train", "quantize int8", "choose the best", "factorize the best",
                            "quantize the best float32", "quantize the factorized int8", "benchmark", "gate"])
    loop = next(task for task in tasks.values() if task["taskInfo"]["name"] == "students")
    assert loop["parameterIterator"]["items"]["raw"] == '["distilled_unlabeled", "hard", "distilled"]'
    assert all(task["cachingOptions"]["enableCache"] for task in tasks.values() if "componentRef" in task
               and not task["componentRef"]["name"].startswith("comp-for-loop"))
    executors = spec["deploymentSpec"]["executors"].values()
    assert {executor["container"]["image"] for executor in executors} == {"registry.example/distillery:9-cpu"}
    assert not any("pip install" in " ".join(executor["container"]["command"]) for executor in executors)
    # Each component calls the library, not a shell string.
    assert all("from pipelines_kfp import steps" in executor["container"]["command"][-1] for executor in executors)

    def outputs(component: str) -> dict:
        artifacts = spec["components"][component]["outputDefinitions"]["artifacts"]
        return {name: value["artifactType"]["schemaTitle"] for name, value in artifacts.items()}

    assert outputs("comp-extract") == {"records": "system.Dataset"}
    assert outputs("comp-train") == {"model": "system.Model", "metrics": "system.Metrics"}
    assert outputs("comp-benchmark") == {"report": "system.Artifact", "report_markdown": "system.Markdown",
                                         "metrics": "system.Metrics"}
    assert outputs("comp-gate") == {"blessed": "system.Model", "verdict": "system.Markdown"}
    assert spec["root"]["outputDefinitions"]["artifacts"]["Output"]["artifactType"]["schemaTitle"] == "system.Model"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "beam_options", "max_int8_drop", "latency_budget_ms", "training", "namespace", "overlay", "train_image",
        "train_timeout_s"}
    assert spec["root"]["inputDefinitions"]["parameters"]["overlay"]["defaultValue"] == "small"


@pytest.mark.parametrize("name", [name for name in configs.RECIPES if name != "demo"])
def test_every_cluster_recipe_compiles_with_its_parts_and_students(tmp_path, name):
    recipe = configs.get_recipe(name)
    spec = yaml.safe_load(compiled(tmp_path, PipelineConfig(config=name)))
    names = [task["taskInfo"]["name"] for task in tasks_of(spec).values()]
    assert sorted(n for n in names if n.startswith("extract")) == sorted(f"extract {part.name}" for part in recipe.parts)
    assert "split Fashion-MNIST" not in names and "train the teacher" not in names
    loop = next(task for task in tasks_of(spec).values() if task["taskInfo"]["name"] == "students")
    assert yaml.safe_load(loop["parameterIterator"]["items"]["raw"]) == chain.training_order(recipe)
    wired = next(task for task in tasks_of(spec).values() if task["taskInfo"]["name"] == "train")["inputs"]["artifacts"]
    assert ("unlabeled" in wired) == ("unlabeled" in [part.name for part in recipe.parts])
    assert spec["deploymentSpec"]["executors"]["exec-gate"]["container"]["image"] == DEFAULT_IMAGE


def test_a_recipe_without_the_pipelines_roles_is_refused(monkeypatch):
    parts = (DataPart("imagenet", "tfds:imagenet2012:train", views=1), DataPart("eval", "tfds:x", views=1))
    odd = Recipe("odd", ("builtin:mobilenet_v2_imagenet",), parts, "eval", (StudentRun("s", ("imagenet",), 0.5, 1.0),))
    monkeypatch.setattr(steps, "load_recipe", lambda *args, **kwargs: odd)
    with pytest.raises(pipeline.PipelineError, match="a part named 'labelled'"):
        pipeline.build(PipelineConfig(config="imagenet"))


def test_the_command_line_compiles_the_same_yaml_and_runs_only_locally(tmp_path):
    script = [sys.executable, "-m", "pipelines_kfp.main"]
    output = tmp_path / "cli.yaml"
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run([*script, "compile", f"--output={output}"], capture_output=True, text=True, timeout=300,
                               env=environment)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert output.read_text(encoding="utf-8") == GOLDEN.read_text(encoding="utf-8")
    refused = subprocess.run([*script, "run", "--config=demo", "--runlocal"], capture_output=True, text=True, timeout=300,
                             env=environment)
    assert refused.returncode != 0 and "run needs --local" in refused.stderr
