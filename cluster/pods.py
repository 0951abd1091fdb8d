"""Every pod a rendered manifest would start, as the controller that starts it would build its spec.

One place that knows where each kind keeps its pod templates, so that checks (cluster/lockdown.py,
tests/test_cluster_*.py) and `--set` parameters cover every pod: a Job's or Deployment's template, each
replica of a TFJob, each replicated job of a JobSet, and the JobManager and TaskManager of a
FlinkDeployment. The Flink operator merges `spec.podTemplate` with the per-role podTemplate, arrays
element by element by name (the manifest sets kubernetes.operator.pod-template.merge-arrays-by-name; by
position, the default, gives the same here because both list flink-main-container first).

    python -c "from cluster import pods, render; print([w for r in render.render_overlay('small') for w, _ in pods.pod_specs(r)])"
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

FLINK_MAIN_CONTAINER = "flink-main-container"


def merge_by_name(base: Any, override: Any) -> Any:
    """The Flink operator's pod template merge: mappings key by key, lists of named mappings by name."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = merge_by_name(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (isinstance(base, list) and isinstance(override, list)
            and all(isinstance(item, dict) and "name" in item for item in base + override)):
        merged = [copy.deepcopy(item) for item in base]
        for item in override:
            names = [existing["name"] for existing in merged]
            if item["name"] in names:
                index = names.index(item["name"])
                merged[index] = merge_by_name(merged[index], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(override)


def pod_templates(resource: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template {metadata, spec}) of every kind of pod a manifest starts: the template itself
    (edits reach the manifest), or for a FlinkDeployment a merged copy per role."""
    kind, spec = resource.get("kind"), resource.get("spec", {})
    if kind in ("Job", "Deployment"):
        yield kind, spec["template"]
    elif kind == "TFJob":
        for replica_type, replica in spec["tfReplicaSpecs"].items():
            yield replica_type, replica["template"]
    elif kind == "JobSet":
        for replicated_job in spec["replicatedJobs"]:
            yield replicated_job["name"], replicated_job["template"]["spec"]["template"]
    elif kind == "FlinkDeployment":
        for role in ("jobManager", "taskManager"):
            yield role, merge_by_name(spec.get("podTemplate", {}), spec.get(role, {}).get("podTemplate", {}))


def pod_specs(resource: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every kind of pod the manifest starts (FlinkDeployment: merged per role)."""
    for where, template in pod_templates(resource):
        yield where, template.get("spec", {})
