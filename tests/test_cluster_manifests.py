"""k8s/: every manifest parses, renders as kustomize does, validates, and says what the issue asks.

Core kinds are checked with kubernetes-validate (strict), JobSet, TFJob and FlinkDeployment against the
CRDs in ../shared/k8s-crds (skipped with a message where that folder is absent), the python
renderer against `kubectl kustomize` where kubectl exists.
"""

import ast
import copy
import pathlib
import shutil
import subprocess

import pytest
import yaml

from cluster import jobset_tf_config, pods, render, validate

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
CRD_DIR = REPO_ROOT.parent / "shared" / "k8s-crds"
OVERLAYS = ("base",) + render.OVERLAYS
DISTILLERY_IMAGE_NAMES = ("distillery", "distillery-gpu", render.IMAGE_REPOSITORY_PLACEHOLDER)
BEAM_BOOT = "/opt/apache/beam/boot"

needs_crds = pytest.mark.skipif(not CRD_DIR.is_dir(), reason=f"no CRD folder at {CRD_DIR} (outside this workplace)")


def console_scripts():
    """Names of setup.py's console scripts, read with ast (no install needed)."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entry_points = ast.literal_eval(node.value)
            return {item.split("=")[0].strip() for item in entry_points["console_scripts"]}
    raise AssertionError("setup.py has no entry_points")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render.render_overlay(request.param)


def test_every_manifest_file_parses():
    files = sorted(K8S_DIR.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, path
        if path.name == "kustomization.yaml":
            assert documents[0]["kind"] == "Kustomization"


def test_overlays_have_the_expected_objects(rendered):
    overlay, resources = rendered
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in resources)
    assert kinds == sorted([
        ("ServiceAccount", "distillery"), ("ConfigMap", "distillery-params"),
        ("ServiceAccount", "distillery-launcher"), ("Role", "distillery-launcher"),
        ("RoleBinding", "distillery-launcher"), ("NetworkPolicy", "distillery-default-deny-ingress"),
        ("NetworkPolicy", "distillery-beam-job-server"), ("NetworkPolicy", "distillery-flink"),
        ("NetworkPolicy", "distillery-train"), ("JobSet", "distillery-train"), ("TFJob", "distillery-train"),
        ("FlinkDeployment", "distillery-flink"),
        ("Deployment", "distillery-beam-job-server"), ("Service", "distillery-beam-job-server"),
        ("Job", "distillery-extract"), ("Job", "distillery-extract-eval"), ("Job", "distillery-factorize"),
        ("Job", "distillery-quantize"), ("Job", "distillery-benchmark")])


def test_core_kinds_validate_strictly(rendered):
    _, resources = rendered
    core = [r for r in resources if (r["apiVersion"], r["kind"]) not in validate.CUSTOM_KINDS]
    assert len(core) == 16
    for resource in core:
        validate.validate_core(resource)


def test_strict_core_validation_rejects_a_misspelt_field():
    (job,) = [r for r in render.render_overlay("small") if r["metadata"]["name"] == "distillery-quantize"]
    job = copy.deepcopy(job)
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # "resources" misspelt
    with pytest.raises(validate.ManifestInvalid, match="resource"):
        validate.validate_core(job)


@needs_crds
def test_custom_resources_validate_against_their_crds(rendered):
    _, resources = rendered
    custom = [r for r in resources if (r["apiVersion"], r["kind"]) in validate.CUSTOM_KINDS]
    assert sorted(r["kind"] for r in custom) == ["FlinkDeployment", "JobSet", "TFJob"]
    for resource in custom:
        validate.validate_custom_resource(resource, CRD_DIR)


@needs_crds
def test_crd_validation_rejects_unknown_fields_and_bad_values():
    resources = render.render_overlay("small")
    (tfjob,) = [copy.deepcopy(r) for r in resources if r["kind"] == "TFJob"]
    tfjob["spec"]["tfReplicaSpecs"]["Chief"]["restartPolcy"] = "OnFailure"
    with pytest.raises(validate.ManifestInvalid, match="restartPolcy"):
        validate.validate_custom_resource(tfjob, CRD_DIR)
    (jobset,) = [copy.deepcopy(r) for r in resources if r["kind"] == "JobSet"]
    jobset["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"]["restartPolcy"] = "Never"
    with pytest.raises(validate.ManifestInvalid, match="restartPolcy"):
        validate.validate_custom_resource(jobset, CRD_DIR)
    (jobset,) = [copy.deepcopy(r) for r in resources if r["kind"] == "JobSet"]
    jobset["spec"]["failurePolicy"]["restartStrategy"] = "Sometimes"
    with pytest.raises(validate.ManifestInvalid, match="restartStrategy"):
        validate.validate_custom_resource(jobset, CRD_DIR)
    (flink,) = [copy.deepcopy(r) for r in resources if r["kind"] == "FlinkDeployment"]
    flink["spec"]["flinkVersion"] = "v1_99"
    with pytest.raises(validate.ManifestInvalid, match="flinkVersion"):
        validate.validate_custom_resource(flink, CRD_DIR)
    # Free-form where the CRD preserves unknown fields: any Flink configuration key is accepted.
    (flink,) = [copy.deepcopy(r) for r in resources if r["kind"] == "FlinkDeployment"]
    flink["spec"]["flinkConfiguration"]["any.flink.key"] = "1"
    validate.validate_custom_resource(flink, CRD_DIR)


def test_strict_schema_adds_additional_properties_false_only_where_the_api_server_prunes():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"c": {}}},
        "map": {"type": "object", "additionalProperties": {"type": "object", "properties": {"d": {}}}}}}
    strict = validate.strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["free"]
    assert strict["properties"]["map"]["additionalProperties"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is left alone


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH: kustomize comparison skipped")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_renderer_matches_kubectl_kustomize(overlay):
    directory = K8S_DIR / "base" if overlay == "base" else K8S_DIR / "overlays" / overlay
    output = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True,
                            check=True, timeout=120).stdout
    expected = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(output) if d}
    actual = {(d["kind"], d["metadata"]["name"]): d for d in render.render_overlay(overlay)}
    assert actual == expected


def test_security_resources_and_no_secrets(rendered):
    _, resources = rendered
    text = yaml.safe_dump_all(resources)
    assert "kind: Secret" not in text and "secretKeyRef" not in text and "secretName" not in text
    assert "PRIVATE KEY" not in text and "GOOGLE_APPLICATION_CREDENTIALS" not in text
    account = next(r for r in resources if r["kind"] == "ServiceAccount" and r["metadata"]["name"] == "distillery")
    assert account["metadata"]["annotations"][render.WORKLOAD_IDENTITY_ANNOTATION].endswith(
        ".iam.gserviceaccount.com")
    specs = [(resource["metadata"]["name"], where, spec) for resource in resources
             for where, spec in pods.pod_specs(resource)]
    assert len(specs) == 12  # 2 JobSet replicated jobs, 2 TFJob replicas, JobManager, TaskManager, job server, 5 Jobs
    for name, where, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, (name, where)
        assert spec["securityContext"]["runAsUser"] > 0, (name, where)
        if name != "distillery-flink":  # the FlinkDeployment names its service account in spec.serviceAccount
            assert spec["serviceAccountName"] == "distillery", (name, where)
        for container in spec["containers"]:
            if container["name"] == "flink-main-container":  # sized by spec.jobManager/taskManager.resource
                continue
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, (name, container["name"])
            resources_ = container["resources"]
            assert set(resources_) == {"requests", "limits"}, (name, container["name"])
            assert {"cpu", "memory"} <= set(resources_["requests"]) and {"cpu", "memory"} <= set(resources_["limits"])
    (flink,) = [r for r in resources if r["kind"] == "FlinkDeployment"]
    assert flink["spec"]["serviceAccount"] == "distillery"
    assert {"cpu", "memory"} <= set(flink["spec"]["jobManager"]["resource"])
    assert {"cpu", "memory"} <= set(flink["spec"]["taskManager"]["resource"])


def test_commands_exist_in_setup_console_scripts(rendered):
    _, resources = rendered
    scripts = console_scripts()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    used = set()
    for resource in resources:
        for container in render.iter_containers(resource):
            image_name = render.split_image(container.get("image", ""))[0]
            if image_name not in DISTILLERY_IMAGE_NAMES:
                continue  # Flink's and Beam's own images
            command = container["command"][0]
            used.add(command)
            if command == BEAM_BOOT:
                assert "COPY --from=beam-boot /opt/apache/beam /opt/apache/beam" in dockerfile
            else:
                assert command in scripts, f"{command} is not a console script in setup.py"
    assert used == {"distillery-train", "distillery-extract", "distillery-factorize", "distillery-quantize",
                    "distillery-benchmark", BEAM_BOOT}


TRAIN_ARGS = ["--train=$(TRAIN_GLOB)", "--eval=$(EVAL_GLOB)", "--model_dir=$(MODEL_DIR)", "--student=$(STUDENT)",
              "--width=$(WIDTH)", "--image_size=$(IMAGE_SIZE)", "--steps=$(STEPS)", "--batch_size=$(BATCH_SIZE)",
              "--learning_rate=$(LEARNING_RATE)", "--optimizer=$(OPTIMIZER)", "--alpha=$(ALPHA)",
              "--temperature=$(TEMPERATURE)", "--checkpoint_every=$(CHECKPOINT_EVERY)", "--log_every=$(LOG_EVERY)",
              "--shuffle_buffer=$(SHUFFLE_BUFFER)", "--warmup_steps=$(WARMUP_STEPS)",
              "--weight_decay=$(WEIGHT_DECAY)", "--label_smoothing=$(LABEL_SMOOTHING)", "--ema_decay=$(EMA_DECAY)",
              "--mixed_precision=$(MIXED_PRECISION)", "--eval_every=$(EVAL_EVERY)", "--strategy=multi_worker"]


def test_jobset_is_multi_worker_gpu_training_that_resumes(rendered):
    overlay, resources = rendered
    (jobset,) = [r for r in resources if r["kind"] == "JobSet"]
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert jobset["metadata"]["labels"][render.COMPONENT_LABEL] == "train"
    replicated = {job["name"]: job for job in jobset["spec"]["replicatedJobs"]}
    assert list(replicated) == ["chief", "worker"]
    assert replicated["chief"]["replicas"] == 1
    assert replicated["worker"]["replicas"] == {"base": 1, "small": 1, "large": 7}[overlay]
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] >= 1  # a lost pod restarts the set, which resumes
    assert jobset["spec"]["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["chief"]}
    gpus = {"base": "1", "small": "1", "large": "4"}[overlay]
    for job in replicated.values():
        assert job["template"]["spec"]["backoffLimit"] == 0
        rules = job["template"]["spec"]["podFailurePolicy"]["rules"]  # a checkpointed exit (42) is no failure
        assert {"containerName": "trainer", "operator": "In", "values": [42]} in [r.get("onExitCodes") for r in rules]
        assert job["template"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        container = jobset_tf_config.trainer_container(job)
        assert container["image"] == "REGISTRY/distillery:0.1.0-gpu"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["args"] == TRAIN_ARGS
        assert "TF_CONFIG" not in yaml.safe_dump(container)  # the trainer builds it from the JobSet's hostnames


def test_tfjob_is_multi_worker_gpu_training_that_resumes(rendered):
    overlay, resources = rendered
    (tfjob,) = [r for r in resources if r["kind"] == "TFJob"]
    assert tfjob["apiVersion"] == "kubeflow.org/v1"
    assert tfjob["metadata"]["labels"][render.COMPONENT_LABEL] == "train-tfjob"
    assert tfjob["spec"]["runPolicy"]["suspend"] is True  # applying everything starts one training, the JobSet
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert set(replicas) == {"Chief", "Worker"}
    assert replicas["Chief"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] == {"base": 1, "small": 1, "large": 7}[overlay]
    gpus = {"base": "1", "small": "1", "large": "4"}[overlay]
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow"
        assert container["image"] == "REGISTRY/distillery:0.1.0-gpu"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["args"] == TRAIN_ARGS
        assert "TF_CONFIG" not in yaml.safe_dump(container)  # the operator sets it
    (params,) = [r for r in resources if r["kind"] == "ConfigMap"]
    assert params["data"]["MODEL_DIR"].startswith("gs://")


def test_flink_deployment_has_worker_pool_sidecar_and_job_server(rendered):
    overlay, resources = rendered
    (flink,) = [r for r in resources if r["kind"] == "FlinkDeployment"]
    (sidecar,) = [c for c in flink["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
                  if c["name"] == "beam-worker-pool"]
    assert sidecar["command"] == [BEAM_BOOT] and sidecar["args"] == ["--worker_pool"]
    assert sidecar["ports"][0]["containerPort"] == 50000
    assert flink["spec"]["taskManager"]["replicas"] == {"base": 2, "small": 2, "large": 32}[overlay]
    assert ":" in flink["spec"]["image"] and not flink["spec"]["image"].endswith(":latest")
    (server,) = [r for r in resources if r["kind"] == "Deployment"]
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "apache/beam_flink1.20_job_server:2.77.0"
    assert flink["spec"]["flinkVersion"] == "v1_20"
    assert "--flink-master=distillery-flink-rest:8081" in container["args"]
    for name in ("distillery-extract", "distillery-extract-eval"):
        (extract,) = [r for r in resources if r["metadata"]["name"] == name]
        args = extract["spec"]["template"]["spec"]["containers"][0]["args"]
        beam_options = args[args.index("--") + 1:]
        assert beam_options == ["--runner=PortableRunner", "--job_endpoint=$(BEAM_JOB_ENDPOINT)",
                                "--artifact_endpoint=$(BEAM_ARTIFACT_ENDPOINT)", "--environment_type=EXTERNAL",
                                "--environment_config=localhost:50000"]


def test_env_references_in_args_all_exist_in_the_configmap(rendered):
    import re

    _, resources = rendered
    (params,) = [r for r in resources if r["kind"] == "ConfigMap"]
    for resource in resources:
        for container in render.iter_containers(resource):
            defined = set(params["data"]) if container.get("envFrom") else set()
            defined |= {env["name"] for env in container.get("env", [])}
            for arg in container.get("args", []):
                for name in re.findall(r"\$\((\w+)\)", arg):
                    assert name in defined, (resource["metadata"]["name"], name)


def test_select_job_and_parameters():
    parameters = render.parse_assignments([
        "model_dir=gs://my-bucket/runs/try1", "workers=3", "gpus=2", "image_repository=ghcr.io/me/distillery",
        "image_tag=0.2.0", "namespace=ml", "gcp_service_account=trainer@p.iam.gserviceaccount.com", "steps=500"])
    resources = render.render("small", "train", parameters)
    assert sorted(r["kind"] for r in resources if r["metadata"]["labels"][render.COMPONENT_LABEL] != "common") == [
        "JobSet"]
    (jobset,) = [r for r in resources if r["kind"] == "JobSet"]
    (params,) = [r for r in resources if r["kind"] == "ConfigMap"]
    (account,) = [r for r in resources if r["kind"] == "ServiceAccount"]
    assert params["data"]["MODEL_DIR"] == "gs://my-bucket/runs/try1" and params["data"]["STEPS"] == "500"
    assert params["data"]["TRAIN_GLOB"] == "gs://BUCKET/distillery/small/soft_labels/train.summary.json"  # untouched
    assert [job["replicas"] for job in jobset["spec"]["replicatedJobs"]] == [1, 3]
    for _, spec in pods.pod_specs(jobset):
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert spec["containers"][0]["image"] == "ghcr.io/me/distillery:0.2.0-gpu"
    tfjob_resources = render.render("small", "train-tfjob", parameters)
    (tfjob,) = [r for r in tfjob_resources if r["kind"] == "TFJob"]
    assert tfjob["spec"]["runPolicy"]["suspend"] is False  # asked for by name: it runs
    assert tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 3
    container = tfjob["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["image"] == "ghcr.io/me/distillery:0.2.0-gpu"
    assert {r["metadata"]["namespace"] for r in resources} == {"ml"}
    assert account["metadata"]["annotations"][render.WORKLOAD_IDENTITY_ANNOTATION] == "trainer@p.iam.gserviceaccount.com"
    benchmark = render.render("large", "benchmark", {"image_tag": "0.2.0"})
    (job,) = [r for r in benchmark if r["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "REGISTRY/distillery:0.2.0-cpu"
    assert render.select_job(render.render_overlay("small"), "extract")[2:] and all(
        r["metadata"]["labels"]["app.kubernetes.io/component"] in ("extract", "common")
        for r in render.render("small", "extract"))


def test_bad_parameters_and_overlays_are_named():
    with pytest.raises(render.RenderError, match="--set bogus: unknown parameter"):
        render.render("small", "train", {"bogus": "1"})
    with pytest.raises(render.RenderError, match="--set workers=-1"):
        render.render("small", "train", {"workers": "-1"})
    with pytest.raises(render.RenderError, match="expected NAME=VALUE"):
        render.parse_assignments(["model_dir"])
    with pytest.raises(render.RenderError, match="--overlay=medium"):
        render.render_overlay("medium")
    with pytest.raises(render.RenderError, match="--job=teach"):
        render.render("small", "teach")


def test_json_patch_operations():
    document = {"a": {"b": [1, 2]}, "c": "x"}
    render.apply_json_patch(document, [
        {"op": "replace", "path": "/a/b/1", "value": 5},
        {"op": "add", "path": "/a/b/-", "value": 7},
        {"op": "add", "path": "/a/d~1e", "value": {"f": 1}},
        {"op": "remove", "path": "/c"}])
    assert document == {"a": {"b": [1, 5, 7], "d/e": {"f": 1}}}
    with pytest.raises(render.RenderError, match="/a/zz does not exist"):
        render.apply_json_patch(document, [{"op": "replace", "path": "/a/zz", "value": 1}], source="p.yaml")
    with pytest.raises(render.RenderError, match="'move' is not supported"):
        render.apply_json_patch(document, [{"op": "move", "from": "/a", "path": "/b"}])


def test_unsupported_kustomize_features_are_refused(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(render.RenderError, match="namePrefix"):
        render.build_kustomization(tmp_path)
