"""Checks rendered manifests offline, without a cluster.

Core kinds (Job, Deployment, Service, ConfigMap, ServiceAccount, NetworkPolicy, Role, RoleBinding) are
checked by the `kubernetes-validate` package against the Kubernetes OpenAPI schemas in strict mode (unknown
fields rejected). Custom resources (JobSet, TFJob, FlinkDeployment) are checked against the
openAPIV3Schema of the served version in their CustomResourceDefinition, with JSON Schema draft 7
(jsonschema), made strict the way the API server prunes: wherever a schema lists `properties`
and neither sets `additionalProperties` nor `x-kubernetes-preserve-unknown-fields: true`, an
unknown field is an error (`additionalProperties: false` is added) -- a misspelt field would
otherwise be silently dropped by the API server.

    python -m cluster.validate --crd_dir=DIR   # every overlay, every object; DIR holds the CRD YAML files

It then checks each overlay with cluster/lockdown.py (no API tokens, read-only root filesystems, network
policies, RBAC).

The CRDs are the operators' own files (Kubeflow training operator, Flink Kubernetes Operator, JobSet);
docs/cluster.md says where to get them.
"""

from __future__ import annotations

import copy
import functools
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import yaml

from cluster import lockdown, render

KUBERNETES_VERSION = "1.33"
CUSTOM_KINDS = {
    ("kubeflow.org/v1", "TFJob"): "kubeflow.org_tfjobs.yaml",
    ("flink.apache.org/v1beta1", "FlinkDeployment"): "flinkdeployments.flink.apache.org-v1.yml",
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobset.x-k8s.io_jobsets.yaml",
}


class ManifestInvalid(ValueError):
    """A manifest that its schema rejects; the message names the object and the field path."""


def strict_schema(schema: Any) -> Any:
    """A copy of an OpenAPI v3 structural schema where unknown fields are errors (module docstring)."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()
              if key not in ("properties", "additionalProperties")}
    if "properties" in schema:
        strict["properties"] = {name: strict_schema(value) for name, value in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        strict["additionalProperties"] = strict_schema(schema["additionalProperties"])
    elif "additionalProperties" in schema:
        strict["additionalProperties"] = schema["additionalProperties"]
    elif "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
    return strict


@functools.cache
def _crd_validator(crd_path: str, version: str) -> jsonschema.Draft7Validator:
    # The CRDs are ~0.6 MB of YAML: libyaml's loader where PyYAML was built with it (10x faster).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(pathlib.Path(crd_path).read_text(encoding="utf-8"), Loader=loader)
    for served in crd["spec"]["versions"]:
        if served["name"] == version and served.get("served", False):
            schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are checked by the API server itself, not by the CRD
            # schema (the FlinkDeployment CRD does not even list apiVersion and kind).
            properties = schema.setdefault("properties", {})
            properties["metadata"] = {"type": "object"}
            properties.setdefault("apiVersion", {"type": "string"})
            properties.setdefault("kind", {"type": "string"})
            return jsonschema.Draft7Validator(strict_schema(schema))
    raise ManifestInvalid(f"{crd_path}: version {version} is not served")


def _describe(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


def validate_custom_resource(resource: Mapping[str, Any], crd_dir: pathlib.Path) -> None:
    """Validates a JobSet, TFJob or FlinkDeployment against its CRD in `crd_dir`.

    Raises:
        ManifestInvalid: the kind has no CRD here, or the schema rejects the object.
        FileNotFoundError: the CRD file is missing.
    """
    key = (resource.get("apiVersion"), resource.get("kind"))
    if key not in CUSTOM_KINDS:
        raise ManifestInvalid(f"{_describe(resource)}: no CRD known for {key}")
    crd_path = pathlib.Path(crd_dir) / CUSTOM_KINDS[key]
    if not crd_path.is_file():
        raise FileNotFoundError(f"{crd_path}: CRD file missing")
    validator = _crd_validator(str(crd_path), key[0].split("/")[-1])
    errors = sorted(validator.iter_errors(dict(resource)), key=lambda error: list(error.absolute_path))
    if errors:
        details = "; ".join(f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
                            for error in errors[:5])
        raise ManifestInvalid(f"{_describe(resource)}: {details}")


def validate_core(resource: Mapping[str, Any], kubernetes_version: str = KUBERNETES_VERSION) -> None:
    """Validates a core-kind object with kubernetes-validate, strict (unknown fields rejected).

    Raises:
        ManifestInvalid: the schema rejects the object.
    """
    import kubernetes_validate  # A test dependency; imported here so that rendering does not need it.

    try:
        kubernetes_validate.validate(dict(resource), kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(map(str, error.absolute_path)) or "<root>"
        raise ManifestInvalid(f"{_describe(resource)}: {path}: {error.message}") from error


def validate_all(resources: Sequence[Mapping[str, Any]], crd_dir: pathlib.Path) -> list[str]:
    """Validates every object; returns 'Kind/name: checked with ...' lines.

    Raises:
        ManifestInvalid: the first object that does not validate.
    """
    checked = []
    for resource in resources:
        if (resource.get("apiVersion"), resource.get("kind")) in CUSTOM_KINDS:
            validate_custom_resource(resource, crd_dir)
            checked.append(f"{_describe(resource)}: valid against its CRD ({crd_dir})")
        else:
            validate_core(resource)
            checked.append(f"{_describe(resource)}: valid (kubernetes-validate {KUBERNETES_VERSION}, strict)")
    return checked


def main(argv: Sequence[str]) -> None:
    del argv
    for overlay in ("base",) + render.OVERLAYS:
        resources = render.render_overlay(overlay)
        for line in validate_all(resources, pathlib.Path(_CRD_DIR.value)):
            print(f"{overlay}: {line}")
        problems = lockdown.problems(resources)
        if problems:
            raise ManifestInvalid(f"{overlay}: not locked down: " + "; ".join(problems))
        print(f"{overlay}: locked down (cluster/lockdown.py): tokens, read-only roots, network policies, RBAC")


if __name__ == "__main__":
    from absl import app, flags

    _CRD_DIR = flags.DEFINE_string("crd_dir", None, "Folder with the operators' CRD YAML files.", required=True)
    app.run(main)
