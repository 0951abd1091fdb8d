"""The cluster jobs run their overlay's recipe (configs/): generated patches, and arguments that parse to its configs.

cluster/overlay_recipes.py says which recipe each overlay runs and writes its recipe-patch.yaml; here the files
must equal what it writes now, and every Distillery container's arguments, expanded with the rendered
ConfigMap as Kubernetes does, must parse (with the command's own flags) to exactly the recipe's typed config.
A hyperparameter the manifest forgets, or one a recipe starts setting, fails here.
"""

import copy

import pytest

from cluster import job_arguments, overlay_recipes, pods, render

OVERLAYS = ("base",) + render.OVERLAYS


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render.render_overlay(request.param)


def _params(resources):
    return job_arguments.configmap_data(resources)[render.PARAMS_CONFIGMAP]


def test_every_overlay_has_a_recipe_and_its_patch_is_up_to_date():
    assert set(overlay_recipes.OVERLAY_RECIPES) == set(OVERLAYS)
    assert overlay_recipes.OVERLAY_RECIPES["large"] == overlay_recipes.OverlayRecipe("imagenet")
    assert overlay_recipes.OVERLAY_RECIPES["small"] == overlay_recipes.OverlayRecipe("imagenet", runlocal=True)
    assert overlay_recipes.stale_patches() == [], "run: python -m cluster.overlay_recipes --write"


def test_the_configmap_holds_the_recipes_settings(rendered):
    overlay, resources = rendered
    recipe = overlay_recipes.OVERLAY_RECIPES[overlay].recipe()
    data = _params(resources)
    expected = overlay_recipes.recipe_parameters(recipe)
    assert {key: data.get(key) for key in expected} == expected
    train = recipe.train_config(overlay_recipes.TRAINED_STUDENT, "in", "eval", "model")
    assert (data["STEPS"], data["BATCH_SIZE"], data["LEARNING_RATE"]) == (
        str(train.steps), str(train.batch_size), str(train.learning_rate))
    if overlay != "small":  # 100 epochs of ImageNet at a global batch of 1024, not the trainer's 1,000 x 64
        assert (data["STEPS"], data["BATCH_SIZE"]) == (str(100 * 1_281_167 // 1024), "1024")


def test_every_job_runs_exactly_the_recipes_config(rendered):
    overlay, resources = rendered
    assert overlay_recipes.mismatches(resources, overlay_recipes.OVERLAY_RECIPES[overlay]) == []
    (jobset,) = [r for r in resources if r["kind"] == "JobSet"]
    parsed = job_arguments.parse(jobset, resources)
    assert parsed.flags == {"strategy": "multi_worker"}
    assert parsed.config.train_pattern == _params(resources)["TRAIN_GLOB"]


@pytest.mark.parametrize("kind, argument, message", [
    ("JobSet", "--steps=$(STEPS)", "steps: runs 1000, the recipe says 125113"),
    ("TFJob", "--learning_rate=$(LEARNING_RATE)", "learning_rate: runs 0.05, the recipe says 0.4"),
    ("Job", "--logit_dtype=$(LOGIT_DTYPE)", "logit_dtype: runs 'float32', the recipe says 'float16'"),
])
def test_a_missing_hyperparameter_is_found(kind, argument, message):
    resources = copy.deepcopy(render.render_overlay("large"))
    for resource in (r for r in resources if r["kind"] == kind):
        for _, template in pods.pod_templates(resource):
            for container in template["spec"]["containers"]:
                if argument in container.get("args", []):
                    container["args"].remove(argument)
    problems = overlay_recipes.mismatches(resources, overlay_recipes.OVERLAY_RECIPES["large"])
    assert any(message in problem for problem in problems), problems


def test_a_misspelt_flag_or_a_chief_that_disagrees_with_its_workers_is_named():
    resources = copy.deepcopy(render.render_overlay("small"))
    (jobset,) = [r for r in resources if r["kind"] == "JobSet"]
    worker = jobset["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"]["containers"][0]
    worker["args"][worker["args"].index("--steps=$(STEPS)")] = "--step=$(STEPS)"
    with pytest.raises(job_arguments.ArgumentsError, match="different command lines.*--step=20"):
        job_arguments.parse(jobset, resources)
    for job in jobset["spec"]["replicatedJobs"]:
        job["template"]["spec"]["template"]["spec"]["containers"][0]["args"] = list(worker["args"])
    with pytest.raises(job_arguments.ArgumentsError, match="JobSet/distillery-train: distillery-train:.*step"):
        job_arguments.parse(jobset, resources)


def test_kubernetes_variable_expansion():
    environment = {"A": "x", "B": "$(A)"}
    assert job_arguments.expand("--a=$(A) $(B) $(C) $$(A)", environment) == "--a=x $(A) $(C) $(A)"
    container = {"envFrom": [{"configMapRef": {"name": "p"}}], "args": ["--t=$(T)", "--u=$(U)", "--h=$(HOME)"],
                 "env": [{"name": "HOME", "value": "/tmp"},
                         {"name": "U", "valueFrom": {"configMapKeyRef": {"name": "p", "key": "T"}}}]}
    assert job_arguments.expanded_args(container, {"p": {"T": "1"}}) == ["--t=1", "--u=1", "--h=/tmp"]


def test_evaluation_records_are_the_eval_extractions_output(rendered):
    _, resources = rendered
    data = _params(resources)
    suffix = render.SUMMARY_SUFFIX
    assert data["TRAIN_GLOB"] == data["CALIBRATION_GLOB"] == data["SOFT_LABELS"] + suffix
    assert data["EVAL_GLOB"] == data["EVAL_SOFT_LABELS"] + suffix
    configs = {r["metadata"]["name"]: job_arguments.parse(r, resources).config for r in resources
               if r["kind"] in ("Job", "JobSet")}
    assert configs["distillery-extract-eval"].output + suffix == data["EVAL_GLOB"]
    assert configs["distillery-extract-eval"].views == 1  # the centre crop every evaluation uses
    assert configs["distillery-extract"].output + suffix == configs["distillery-train"].train_pattern
    for reader in ("distillery-train", "distillery-factorize"):
        assert configs[reader].eval_pattern == data["EVAL_GLOB"]
    assert configs["distillery-benchmark"].eval_pattern == data["EVAL_GLOB"]
    assert configs["distillery-quantize"].calibration == configs["distillery-extract"].output + suffix


def test_tfds_data_dir_reaches_every_container_that_reads_a_tfds_source(rendered):
    _, resources = rendered
    data = _params(resources)
    assert data["SOURCE"].startswith("tfds:") and data["EVAL_SOURCE"].startswith("tfds:")
    assert data["TFDS_DATA_DIR"].startswith("gs://")
    configmaps = job_arguments.configmap_data(resources)
    readers = 0
    for resource in resources:
        for _, spec in pods.pod_specs(resource):
            for container in spec["containers"]:
                if container.get("command", [""])[0] in ("distillery-extract", "/opt/apache/beam/boot"):
                    environment = job_arguments.container_environment(container, configmaps)
                    assert environment.get("TFDS_DATA_DIR") == data["TFDS_DATA_DIR"], container["name"]
                    readers += 1
    assert readers == 3  # the two extract launchers and the TaskManagers' SDK worker pool


def test_setting_an_extractions_output_moves_the_summaries_that_name_it():
    (params,) = [r for r in render.render("small", "extract", {"soft_labels": "gs://b/s/train",
                                                               "eval_soft_labels": "gs://b/s/eval"})
                 if r["kind"] == "ConfigMap"]
    assert params["data"]["TRAIN_GLOB"] == params["data"]["CALIBRATION_GLOB"] == "gs://b/s/train.summary.json"
    assert params["data"]["EVAL_GLOB"] == "gs://b/s/eval.summary.json"
    (params,) = [r for r in render.render("small", "train", {"soft_labels": "gs://b/s/train", "train_glob": "gs://x-*"})
                 if r["kind"] == "ConfigMap"]
    assert params["data"]["TRAIN_GLOB"] == "gs://x-*"  # set explicitly: kept


def test_a_recipe_with_an_ensemble_or_two_training_parts_is_refused():
    import configs

    recipe = configs.get("imagenet_openimages")
    with pytest.raises(overlay_recipes.OverlayRecipeError, match="distilled_unlabeled trains on"):
        overlay_recipes.recipe_parameters(recipe, "distilled_unlabeled")
    ensemble = copy.copy(recipe)
    object.__setattr__(ensemble, "teachers", ("a", "b"))
    with pytest.raises(overlay_recipes.OverlayRecipeError, match="one --teacher"):
        overlay_recipes.recipe_parameters(ensemble)
