"""The pipeline of one recipe: its DAG built from configs/chain.py's stages, and its compilation to IR YAML.

    demo (only):  split Fashion-MNIST -> train the teacher
    every recipe: extract each part -> ParallelFor students: train -> quantize int8
                  -> choose the best -> factorize it | quantize it to float32
                  -> quantize the factorized one to int8 -> benchmark every model -> gate -> the blessed Model

The recipe, `runlocal` and the image are fixed when the pipeline is built (the parts and the students are
its structure); the gate's thresholds, the Beam runner and where students train are run-time parameters.
Every step is cached: a rerun with other gate thresholds reruns only the gate.

    distillery-pipeline compile --config=imagenet_openimages --output=pipeline.yaml

No `from __future__ import annotations` here: KFP reads the pipeline function's annotations.
"""

import re

from kfp import compiler, dsl
from kfp.dsl import Model

from configs import chain
from pipelines_kfp import components, steps
from pipelines_kfp.pipeline_config import RUN_PARAMETERS, PipelineConfig

# The pipeline's roles: the parts its train, quantize and factorize steps take (configs/recipe.py names them).
LABELLED, UNLABELED = "labelled", "unlabeled"
# In local runs the small TensorFlow jobs (train, quantize, factorize) get one thread each, as demo/run.py
# gives them: two run at once in the students' ParallelFor, on a machine of a few cores.
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


class PipelineError(ValueError):
    """A recipe the pipeline cannot run; the message names the recipe and what is missing."""


def pipeline_name(config: PipelineConfig) -> str:
    """distillery-RECIPE[-runlocal], as KFP names pipelines (lower case, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]", "-", f"distillery-{config.config}" + ("-runlocal" if config.runlocal else ""))


def parameters(config: PipelineConfig) -> dict:
    """The pipeline's run-time parameters from `config` (the overlay: small for runlocal recipes, else large)."""
    values = {name: getattr(config, name) for name in RUN_PARAMETERS}
    values["overlay"] = config.overlay or ("small" if config.runlocal else "large")
    return values


def check_roles(recipe) -> None:
    """The pipeline trains on a labelled part and maybe an unlabeled one, and evaluates on the eval part."""
    if recipe.training_parts() not in ((LABELLED,), (LABELLED, UNLABELED)):
        raise PipelineError(f"recipe {recipe.name}: the pipeline trains on a part named {LABELLED!r} and optionally "
                            f"one named {UNLABELED!r}, besides the eval part; its training parts are "
                            f"{list(recipe.training_parts())}")


def build(config: PipelineConfig, one_thread: bool = False):
    """The pipeline (a KFP graph component) of `config`'s recipe; `one_thread` sets ONE_THREAD on the small jobs'
    steps (local runs)."""
    recipe = steps.load_recipe(config.config, config.runlocal)
    check_roles(recipe)
    step = components.make_components(config.image)
    fixed = {"recipe": config.config, "runlocal": config.runlocal}
    students = chain.training_order(recipe)

    def named(task: dsl.PipelineTask, name: str, small_job: bool = False) -> dsl.PipelineTask:
        """The task shown as `name`; a small TensorFlow job gets one thread in local runs, as in demo/run.py."""
        for variable, value in (ONE_THREAD.items() if one_thread and small_job else ()):
            task.set_env_variable(variable, value)
        return task.set_display_name(name)

    defaults = parameters(config)

    @dsl.pipeline(name=pipeline_name(config), description=f"Distillery's chain on the {config.config} recipe"
                  + (" (runlocal)" if config.runlocal else "") + ": images to a blessed int8 model.")
    def distillery_chain(beam_options: str = defaults["beam_options"], max_int8_drop: float = defaults["max_int8_drop"],
                         latency_budget_ms: float = defaults["latency_budget_ms"], training: str = defaults["training"],
                         namespace: str = defaults["namespace"], overlay: str = defaults["overlay"],
                         train_image: str = defaults["train_image"],
                         train_timeout_s: int = defaults["train_timeout_s"]) -> Model:
        prepared = {}
        if config.config == steps.DEMO:
            split = named(step["split_data"](**fixed, idx_dir=config.idx_dir), "split Fashion-MNIST")
            teacher = named(step["train_teacher"](**fixed, data=split.outputs["data"]), "train the teacher")
            prepared = {"data": split.outputs["data"], "teacher": teacher.outputs["teacher"]}
        records = {part.name: named(step["extract"](**fixed, part=part.name, beam_options=beam_options, **prepared),
                                    f"extract {part.name}").outputs["records"]
                   for part in recipe.parts}
        roles = {"labelled": records[LABELLED], "evaluation": records[recipe.eval_part],
                 **({"unlabeled": records[UNLABELED]} if UNLABELED in records else {})}
        with dsl.ParallelFor(students, name="students") as student:
            trained = named(step["train"](**fixed, student=student, training=training, namespace=namespace,
                                          overlay=overlay, train_image=train_image, timeout_s=train_timeout_s,
                                          **roles), "train", small_job=True)
            converted = named(step["quantize"](**fixed, name=student, mode="int8", model=trained.outputs["model"],
                                               labelled=records[LABELLED]), "quantize int8", small_job=True)
        best = named(step["choose_best"](**fixed, students=dsl.Collected(trained.outputs["model"])), "choose the best")
        factorized = named(step["factorize"](**fixed, best=best.outputs["best"], **roles), "factorize the best", small_job=True)
        reference = named(step["quantize"](**fixed, name=best.outputs["Output"], mode=chain.REFERENCE_MODE,
                                           model=best.outputs["best"], labelled=records[LABELLED]),
                          "quantize the best float32", small_job=True)
        candidate = named(step["quantize"](**fixed, name=chain.FACTORIZED, mode="int8",
                                           model=factorized.outputs["factorized"], labelled=records[LABELLED]),
                          "quantize the factorized int8", small_job=True)
        report = named(step["benchmark"](**fixed, best=best.outputs["Output"],
                                         students=dsl.Collected(converted.outputs["tflite"]),
                                         factorized=candidate.outputs["tflite"], reference=reference.outputs["tflite"],
                                         evaluation=records[recipe.eval_part]), "benchmark")
        verdict = named(step["gate"](max_int8_drop=max_int8_drop, latency_budget_ms=latency_budget_ms,
                                     report=report.outputs["report"], candidate=candidate.outputs["tflite"],
                                     reference=reference.outputs["tflite"]), "gate")
        return verdict.outputs["blessed"]

    return distillery_chain


def compile_pipeline(config: PipelineConfig, path: str) -> str:
    """Writes the IR YAML of `config`'s pipeline to `path` (the same bytes for the same config and sources)."""
    compiler.Compiler().compile(build(config), package_path=path)
    return path
