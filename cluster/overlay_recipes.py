"""Which recipe (configs/) each kustomize overlay runs, and the parameters ConfigMap values that follow from it.

The hyperparameters of the cluster jobs are the recipe's, not hand-copied numbers: each overlay's
`recipe-patch.yaml` is generated here from its recipe (steps, global batch, learning rate, views, teacher,
...), and k8s/base/params.yaml holds the base's recipe. tests/test_cluster_recipes.py checks that every file
equals what this module writes and that the containers' arguments, expanded with the ConfigMap, parse to
exactly the recipe's typed configs (cluster/job_arguments.py).

  - base, large: `imagenet` (ImageNet train split, 10 views; MobileNet V1 0.25/128; 100 epochs at a global
    batch of 1024);
  - small: `imagenet` with runlocal (256 + 256 validation images, 20 steps): the whole chain on a cluster in
    minutes, to try it, not for accuracy.

The trained student is the recipe's `distilled`. `imagenet_openimages` needs a third extraction (the
unlabeled part) and is not an overlay yet.

    python -m cluster.overlay_recipes            # exit status 1 and the stale files if a patch is out of date
    python -m cluster.overlay_recipes --write    # rewrite k8s/overlays/*/recipe-patch.yaml
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import yaml

import configs
from cluster import job_arguments, pods, render
from configs.recipe import Recipe

PATCH_FILE = "recipe-patch.yaml"
TRAINED_STUDENT = "distilled"


@dataclasses.dataclass(frozen=True)
class OverlayRecipe:
    """The recipe an overlay runs: a configs/ name, shrunk or not."""

    name: str
    runlocal: bool = False

    def recipe(self) -> Recipe:
        return configs.get(self.name, runlocal=self.runlocal)


OVERLAY_RECIPES = {"base": OverlayRecipe("imagenet"), "small": OverlayRecipe("imagenet", runlocal=True),
                   "large": OverlayRecipe("imagenet")}

# ConfigMap key -> (job, field of that job's config). The jobs' arguments pass each as --FLAG=$(KEY).
TRAIN_KEYS = {"STUDENT": "student", "WIDTH": "width", "IMAGE_SIZE": "image_size", "STEPS": "steps",
              "BATCH_SIZE": "batch_size", "LEARNING_RATE": "learning_rate", "OPTIMIZER": "optimizer",
              "ALPHA": "alpha", "TEMPERATURE": "temperature", "CHECKPOINT_EVERY": "checkpoint_every",
              "LOG_EVERY": "log_every", "SHUFFLE_BUFFER": "shuffle_buffer", "WARMUP_STEPS": "warmup_steps",
              "WEIGHT_DECAY": "weight_decay", "LABEL_SMOOTHING": "label_smoothing", "EMA_DECAY": "ema_decay",
              "MIXED_PRECISION": "mixed_precision", "EVAL_EVERY": "eval_every"}
EXTRACT_KEYS = {"SOURCE": "source", "VIEWS": "views", "TOP_K": "top_k", "LOGIT_DTYPE": "logit_dtype",
                "STORE_IMAGE_MAX_SIDE": "store_image_max_side", "EXTRACT_BATCH_SIZE": "batch_size"}
EVAL_EXTRACT_KEYS = {"EVAL_SOURCE": "source", "EVAL_VIEWS": "views"}
FACTORIZE_KEYS = {"LATENCY_REDUCTION": "latency_reduction", "SELECTION_ROUNDS": "selection_rounds"}
FINETUNE_KEYS = {"FINETUNE_MODE": "mode", "FINETUNE_STEPS": "steps", "FINETUNE_FINAL_STEPS": "final_steps",
                 "FINETUNE_BATCH_SIZE": "batch_size", "FINETUNE_LEARNING_RATE": "learning_rate",
                 "FINETUNE_TEMPERATURE": "temperature"}
QUANTIZE_KEYS = {"QUANT_MODE": "mode", "CALIBRATION_STEPS": "calibration_steps"}
BENCHMARK_KEYS = {"BENCHMARK_RUNS": "runs", "BENCHMARK_ROUNDS": "rounds", "BENCHMARK_PROFILE": "profile"}


class OverlayRecipeError(ValueError):
    """A recipe the manifests cannot run as they are; the message names the setting."""


def flag_value(value: Any) -> str:
    """A config value as its flag writes it (`--flag=VALUE`; booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _values(config: Any, keys: Mapping[str, str]) -> dict[str, str]:
    return {key: flag_value(getattr(config, field)) for key, field in keys.items()}


def recipe_parameters(recipe: Recipe, student_name: str = TRAINED_STUDENT) -> dict[str, str]:
    """The ConfigMap values of one recipe's settings (the paths are placeholders; they are not recipe settings).

    Raises:
        OverlayRecipeError: more than one teacher (the manifests pass one --teacher).
    """
    if len(recipe.teachers) != 1:
        raise OverlayRecipeError(f"recipe {recipe.name}: teachers {recipe.teachers}: the extract Jobs pass one "
                                 "--teacher=$(TEACHER)")
    student = recipe.student(student_name)
    if len(student.parts) != 1:
        raise OverlayRecipeError(f"recipe {recipe.name}: student {student_name} trains on {student.parts}; the "
                                 "manifests extract one training part")
    labelled = recipe.extract_config(student.parts[0], "OUT", "DEAD")
    evaluation = recipe.extract_config(recipe.eval_part, "OUT", "DEAD")
    train = recipe.train_config(student_name, "IN", "EVAL", "MODEL")
    factorize = recipe.factorize_config("MODEL", "IN", "OUT", "EVAL", student.temperature)
    values = {"TEACHER": recipe.teachers[0], **_values(labelled, EXTRACT_KEYS),
              **_values(evaluation, EVAL_EXTRACT_KEYS), **_values(train, TRAIN_KEYS),
              **_values(factorize, FACTORIZE_KEYS), **_values(factorize.tuning, FINETUNE_KEYS),
              **_values(recipe.quantize_config("MODEL", "OUT", "IN"), QUANTIZE_KEYS),
              **_values(recipe.benchmark_config("REPORT", "EVAL"), BENCHMARK_KEYS)}
    return values


def expected_configs(recipe: Recipe, data: Mapping[str, str], student_name: str = TRAINED_STUDENT) -> dict[str, Any]:
    """{manifest name: the typed config the recipe gives that job}, with the ConfigMap's paths."""
    student = recipe.student(student_name)
    return {
        "distillery-extract": recipe.extract_config(student.parts[0], data["SOFT_LABELS"], data["DEAD_LETTER"]),
        "distillery-extract-eval": recipe.extract_config(recipe.eval_part, data["EVAL_SOFT_LABELS"],
                                                         data["EVAL_DEAD_LETTER"]),
        "distillery-train": recipe.train_config(student_name, data["TRAIN_GLOB"], data["EVAL_GLOB"], data["MODEL_DIR"]),
        "distillery-factorize": recipe.factorize_config(f"{data['MODEL_DIR']}/student.keras", data["TRAIN_GLOB"],
                                                        data["FACTORIZED_MODEL"], data["EVAL_GLOB"],
                                                        student.temperature),
        "distillery-quantize": recipe.quantize_config(data["FACTORIZED_MODEL"], data["TFLITE_MODEL"],
                                                      data["CALIBRATION_GLOB"]),
        "distillery-benchmark": recipe.benchmark_config(data["REPORT_DIR"], data["EVAL_GLOB"]),
    }


def _differences(actual: Any, expected: Any) -> list[str]:
    if dataclasses.is_dataclass(actual) and type(actual) is type(expected):
        return [f"{field.name}: {difference}" for field in dataclasses.fields(actual)
                for difference in _differences(getattr(actual, field.name), getattr(expected, field.name))]
    return [] if actual == expected else [f"runs {actual!r}, the recipe says {expected!r}"]


def mismatches(resources: list[dict[str, Any]], choice: OverlayRecipe) -> list[str]:
    """Where the rendered jobs would run something else than `choice`'s recipe (empty: they run it)."""
    data = job_arguments.configmap_data(resources)[render.PARAMS_CONFIGMAP]
    expected = expected_configs(choice.recipe(), data)
    found, problems = set(), []
    for resource in resources:
        if resource["metadata"]["name"] not in expected or not any(True for _ in pods.pod_specs(resource)):
            continue
        name = resource["metadata"]["name"]
        found.add(name)
        try:
            parsed = job_arguments.parse(resource, resources)
        except job_arguments.ArgumentsError as error:
            problems.append(str(error))
            continue
        problems += [f"{resource['kind']}/{name}: {difference}"
                     for difference in _differences(parsed.config, expected[name])]
    problems += [f"{name}: no such job in the manifests" for name in sorted(set(expected) - found)]
    return problems


def patch_text(overlay: str) -> str:
    """The overlay's recipe-patch.yaml: JSON patch operations setting every recipe key of the ConfigMap."""
    choice = OVERLAY_RECIPES[overlay]
    operations = [{"op": "add", "path": f"/data/{key}", "value": value}
                  for key, value in recipe_parameters(choice.recipe()).items()]
    header = (f"# Generated by `python -m cluster.overlay_recipes --write` from configs/{choice.name}.py "
              f"(runlocal={choice.runlocal}): do not edit.\n"
              "# The recipe's settings in the parameters ConfigMap; the jobs pass each as --FLAG=$(KEY).\n")
    return header + yaml.safe_dump(operations, sort_keys=False, default_flow_style=False)


def patch_path(overlay: str, k8s_dir: pathlib.Path = render.K8S_DIR) -> pathlib.Path:
    return k8s_dir / "overlays" / overlay / PATCH_FILE


def stale_patches(k8s_dir: pathlib.Path = render.K8S_DIR) -> list[pathlib.Path]:
    """The overlays' recipe patches whose content is not what their recipe gives now."""
    return [patch_path(overlay, k8s_dir) for overlay in render.OVERLAYS
            if not patch_path(overlay, k8s_dir).is_file()
            or patch_path(overlay, k8s_dir).read_text(encoding="utf-8") != patch_text(overlay)]


def main(argv: list[str]) -> int:
    if argv[1:] == ["--write"]:
        for overlay in render.OVERLAYS:
            patch_path(overlay).write_text(patch_text(overlay), encoding="utf-8")
            print(f"wrote {patch_path(overlay)}")
        return 0
    stale = stale_patches()
    for path in stale:
        print(f"{path}: out of date with its recipe (python -m cluster.overlay_recipes --write)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
