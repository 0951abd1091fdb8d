"""Renders Distillery's Kubernetes manifests (k8s/) for one job, with its parameters.

k8s/ is a plain kustomize tree: `kubectl kustomize k8s/overlays/small` gives the same objects as
`render_overlay("small")` here. This module implements exactly the kustomize features that tree
uses (`resources` files and folders, `labels` pairs, `images`, `patches` with RFC 6902 JSON
patches and a kind/name target), so manifests can be rendered and checked on machines without
kubectl; anything else in a kustomization.yaml is refused with an error naming the file. On top of
kustomize it selects one job's objects and applies `--set` parameters (below).

    distillery-submit render --overlay=small --job=train --set model_dir=gs://my-bucket/runs/try1

Jobs (`--job`): `train` (the JobSet), `train-tfjob` (the same training as a TFJob, for clusters with only
the Kubeflow training operator; rendered unsuspended, while `all` and plain kustomize keep it suspended),
`extract` (the Flink session, the Beam job server and both extract Jobs), `factorize`, `quantize`,
`benchmark`, `launcher` (the pipeline launcher's service account and Role); each comes with the objects
labelled `common` (service account, parameters, network policies).

Parameters (`--set NAME=VALUE`):
  - any key of the `distillery-params` ConfigMap, in lower case (model_dir, train_glob, steps, ...);
    setting soft_labels or eval_soft_labels alone also points train_glob and calibration_glob, or eval_glob,
    at that extraction's summary file;
  - `workers`: training worker replicas besides the chief (JobSet and TFJob); `gpus`: GPUs per training pod;
  - `taskmanagers`: Flink TaskManager replicas;
  - `image_repository`, `image_tag`: where the Distillery image lives (the tag gets the variant
    suffix -cpu / -gpu that each container already uses);
  - `gcp_service_account`: the Google service account the Kubernetes one maps to (Workload Identity);
  - `namespace`: metadata.namespace of every object.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from cluster import pods

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
OVERLAYS = ("small", "large")
JOBS = ("train", "train-tfjob", "extract", "factorize", "quantize", "benchmark", "launcher")
PARAMS_CONFIGMAP = "distillery-params"
SERVICE_ACCOUNT = "distillery"
# The repository the base's `images` entries give the Distillery image (k8s/base/kustomization.yaml).
IMAGE_REPOSITORY_PLACEHOLDER = "REGISTRY/distillery"
COMPONENT_LABEL = "app.kubernetes.io/component"
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"
_SUPPORTED_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
_STRUCTURAL_PARAMETERS = ("workers", "gpus", "taskmanagers", "image_repository", "image_tag",
                          "gcp_service_account", "namespace")
SUMMARY_SUFFIX = ".summary.json"  # distillery/records.py: an extraction's list of the files it wrote
# ConfigMap keys that name an extraction's summary, and the output prefix they follow when only it is set.
_FOLLOWS_OUTPUT = {"TRAIN_GLOB": "SOFT_LABELS", "CALIBRATION_GLOB": "SOFT_LABELS", "EVAL_GLOB": "EVAL_SOFT_LABELS"}

Manifest = dict[str, Any]


class RenderError(ValueError):
    """A kustomization, a patch or a parameter that cannot be rendered; the message names it."""


def load_documents(path: pathlib.Path) -> list[Manifest]:
    """Reads every non-empty YAML document of a file.

    Raises:
        RenderError: the file is missing or a document is not a mapping.
    """
    if not path.is_file():
        raise RenderError(f"{path}: no such file")
    with path.open(encoding="utf-8") as stream:
        documents = [document for document in yaml.safe_load_all(stream) if document is not None]
    for document in documents:
        if not isinstance(document, dict):
            raise RenderError(f"{path}: a document is a {type(document).__name__}, not a mapping")
    return documents


def build_kustomization(directory: pathlib.Path) -> list[Manifest]:
    """Builds a kustomization folder the way `kubectl kustomize DIR` does (for the features used).

    Order within one kustomization, as kustomize: its resources (bases built first, recursively),
    then its patches, then its labels, then its images.

    Raises:
        RenderError: unsupported kustomize fields, missing files, patches whose target is absent.
    """
    kustomization_path = directory / "kustomization.yaml"
    (kustomization,) = load_documents(kustomization_path) or [{}]
    unsupported = set(kustomization) - _SUPPORTED_KUSTOMIZATION_KEYS
    if unsupported:
        raise RenderError(f"{kustomization_path}: kustomize fields {sorted(unsupported)} are not "
                          "supported by cluster.render (use `kubectl kustomize`)")
    resources: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(build_kustomization(path))
        else:
            resources.extend(load_documents(path))
    for patch in kustomization.get("patches", []):
        _apply_patch_entry(resources, patch, directory, kustomization_path)
    for label_entry in kustomization.get("labels", []):
        if label_entry.get("includeSelectors") or label_entry.get("includeTemplates"):
            raise RenderError(f"{kustomization_path}: labels with includeSelectors/includeTemplates "
                              "are not supported by cluster.render")
        for resource in resources:
            resource.setdefault("metadata", {}).setdefault("labels", {}).update(label_entry["pairs"])
    for image in kustomization.get("images", []):
        for resource in resources:
            set_image(resource, image["name"], image.get("newName"), image.get("newTag"))
    return resources


def _apply_patch_entry(resources: list[Manifest], patch: Mapping[str, Any], directory: pathlib.Path,
                       kustomization_path: pathlib.Path) -> None:
    target = patch.get("target")
    if not target or set(target) - {"kind", "name"}:
        raise RenderError(f"{kustomization_path}: each patch needs a target with kind and name only")
    if "path" in patch:
        patch_path = directory / patch["path"]
        if not patch_path.is_file():
            raise RenderError(f"{patch_path}: no such file")
        operations = yaml.safe_load(patch_path.read_text(encoding="utf-8"))
    else:
        patch_path = kustomization_path
        operations = yaml.safe_load(patch.get("patch", ""))
    if not isinstance(operations, list):
        raise RenderError(f"{patch_path}: only JSON 6902 patches (a list of operations) are supported "
                          "by cluster.render")
    matches = [resource for resource in resources
               if resource.get("kind") == target["kind"]
               and resource.get("metadata", {}).get("name") == target["name"]]
    if not matches:
        raise RenderError(f"{kustomization_path}: patch target {target} matches no resource")
    for resource in matches:
        apply_json_patch(resource, operations, source=str(patch_path))


def _split_pointer(pointer: str, source: str) -> list[str]:
    if not pointer.startswith("/"):
        raise RenderError(f"{source}: JSON pointer {pointer!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def apply_json_patch(document: Manifest, operations: Sequence[Mapping[str, Any]], source: str = "patch") -> None:
    """Applies RFC 6902 `add`, `replace` and `remove` operations in place.

    Raises:
        RenderError: an unsupported operation or a path that does not exist (for replace/remove,
            or whose parent does not exist for add), naming `source`.
    """
    for operation in operations:
        op = operation.get("op")
        if op not in ("add", "replace", "remove"):
            raise RenderError(f"{source}: JSON patch operation {op!r} is not supported")
        parts = _split_pointer(operation["path"], source)
        parent: Any = document
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        except (KeyError, IndexError, ValueError) as error:
            raise RenderError(f"{source}: path {operation['path']} does not exist") from error
        last = parts[-1]
        if isinstance(parent, list):
            index = len(parent) if (op == "add" and last == "-") else int(last)
            if op == "add":
                parent.insert(index, copy.deepcopy(operation["value"]))
            elif index >= len(parent):
                raise RenderError(f"{source}: path {operation['path']} does not exist")
            elif op == "replace":
                parent[index] = copy.deepcopy(operation["value"])
            else:
                del parent[index]
        elif isinstance(parent, dict):
            if op != "add" and last not in parent:
                raise RenderError(f"{source}: path {operation['path']} does not exist")
            if op == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(operation["value"])
        else:
            raise RenderError(f"{source}: path {operation['path']} goes through a scalar")


def split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', ':tag'); keeps '@digest'; a ':' in a registry port is not a tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def iter_containers(node: Any) -> Iterable[dict[str, Any]]:
    """Every container (and init container) anywhere in a manifest, as kustomize's image transformer
    finds them: items of any `containers` or `initContainers` list, whatever the kind."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (item for item in value if isinstance(item, dict))
            yield from iter_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_containers(item)


def set_image(resource: Manifest, name: str, new_name: str | None, new_tag: str | None) -> None:
    """kustomize `images`: containers whose image is `name` (any tag) get new_name and/or new_tag."""
    for container in iter_containers(resource):
        image = container.get("image")
        if not isinstance(image, str):
            continue
        image_name, tag = split_image(image)
        if image_name != name:
            continue
        container["image"] = (new_name or image_name) + (f":{new_tag}" if new_tag else tag)


def render_overlay(overlay: str, k8s_dir: pathlib.Path = K8S_DIR) -> list[Manifest]:
    """Builds `k8s/overlays/<overlay>` (or `base`, or a folder path given as the overlay).

    Raises:
        RenderError: the overlay is unknown.
    """
    if overlay == "base":
        directory = k8s_dir / "base"
    elif overlay in OVERLAYS:
        directory = k8s_dir / "overlays" / overlay
    else:
        directory = pathlib.Path(overlay)
    if not (directory / "kustomization.yaml").is_file():
        raise RenderError(f"--overlay={overlay}: no kustomization.yaml in {directory} "
                          f"(known overlays: base, {', '.join(OVERLAYS)}, or a folder)")
    return build_kustomization(directory)


def select_job(resources: Sequence[Manifest], job: str) -> list[Manifest]:
    """The objects one job needs: those labelled with its component plus the common ones
    (service account, parameters). `all` keeps everything.

    Raises:
        RenderError: unknown job.
    """
    if job == "all":
        return list(resources)
    if job not in JOBS:
        raise RenderError(f"--job={job}: unknown job (one of all, {', '.join(JOBS)})")
    return [resource for resource in resources
            if resource["metadata"].get("labels", {}).get(COMPONENT_LABEL) in (job, "common")]


def parse_assignments(assignments: Iterable[str]) -> dict[str, str]:
    """['model_dir=gs://b/m', ...] -> {'model_dir': 'gs://b/m'}.

    Raises:
        RenderError: an item without '='.
    """
    parameters = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        if not separator or not name:
            raise RenderError(f"--set {assignment!r}: expected NAME=VALUE")
        parameters[name.strip()] = value
    return parameters


def _find(resources: Sequence[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [resource for resource in resources
            if resource["kind"] == kind and (name is None or resource["metadata"]["name"] == name)]


def _positive_int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise RenderError(f"--set {name}={value}: expected an integer >= {minimum}")
    return number


def apply_parameters(resources: Sequence[Manifest], parameters: Mapping[str, str]) -> list[Manifest]:
    """Returns copies of `resources` with the `--set` parameters applied (module docstring).

    Raises:
        RenderError: an unknown parameter (naming the known ones) or a bad value.
    """
    resources = copy.deepcopy(list(resources))
    configmaps = _find(resources, "ConfigMap", PARAMS_CONFIGMAP)
    known_keys = sorted(configmaps[0]["data"]) if configmaps else []
    for name, value in parameters.items():
        if name == "workers":
            workers = _positive_int(name, value, 0)
            for tfjob in _find(resources, "TFJob"):
                tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = workers
            for jobset in _find(resources, "JobSet"):
                for replicated_job in jobset["spec"]["replicatedJobs"]:
                    if replicated_job["name"] == "worker":
                        replicated_job["replicas"] = workers
        elif name == "gpus":
            gpus = str(_positive_int(name, value, 0))
            for trainer in _find(resources, "TFJob") + _find(resources, "JobSet"):
                for _, spec in pods.pod_specs(trainer):
                    for container in spec["containers"]:
                        for bound in ("requests", "limits"):
                            container["resources"][bound]["nvidia.com/gpu"] = gpus
        elif name == "taskmanagers":
            for flink in _find(resources, "FlinkDeployment"):
                flink["spec"]["taskManager"]["replicas"] = _positive_int(name, value, 1)
        elif name in ("image_repository", "image_tag"):
            for resource in resources:
                for container in iter_containers(resource):
                    image_name, tag = split_image(container.get("image", ""))
                    if image_name != IMAGE_REPOSITORY_PLACEHOLDER and image_name != parameters.get(
                            "image_repository"):
                        continue
                    if name == "image_repository":
                        container["image"] = value + tag
                    else:
                        variant = tag.rsplit("-", 1)[-1] if "-" in tag else ""
                        container["image"] = f"{image_name}:{value}" + (f"-{variant}" if variant else "")
        elif name == "gcp_service_account":
            for account in _find(resources, "ServiceAccount", SERVICE_ACCOUNT):
                account["metadata"].setdefault("annotations", {})[WORKLOAD_IDENTITY_ANNOTATION] = value
        elif name == "namespace":
            for resource in resources:
                resource["metadata"]["namespace"] = value
        else:
            key = name.upper()
            if key not in known_keys:
                known = ", ".join(sorted(_STRUCTURAL_PARAMETERS) + [k.lower() for k in known_keys])
                raise RenderError(f"--set {name}: unknown parameter (known: {known})")
            configmaps[0]["data"][key] = value
    for key, output in _FOLLOWS_OUTPUT.items():
        if output.lower() in parameters and key.lower() not in parameters and configmaps:
            configmaps[0]["data"][key] = parameters[output.lower()] + SUMMARY_SUFFIX
    return resources


def render(overlay: str, job: str = "all", parameters: Mapping[str, str] | None = None,
           k8s_dir: pathlib.Path = K8S_DIR) -> list[Manifest]:
    """Overlay -> one job's objects -> parameters applied (`train-tfjob`: the TFJob unsuspended)."""
    resources = select_job(render_overlay(overlay, k8s_dir), job)
    if job == "train-tfjob":
        for tfjob in _find(resources, "TFJob"):
            tfjob["spec"].setdefault("runPolicy", {})["suspend"] = False
    return apply_parameters(resources, parameters or {})


def to_yaml(resources: Sequence[Manifest]) -> str:
    """Multi-document YAML, as `kubectl apply -f -` reads it."""
    return yaml.safe_dump_all(list(resources), sort_keys=False, default_flow_style=False)
