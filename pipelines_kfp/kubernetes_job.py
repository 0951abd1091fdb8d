"""Creates a training JobSet or TFJob through the Kubernetes API and waits for it to succeed or fail.

Kubeflow Pipelines v2 has no ResourceOp: the pipeline's training step, on a cluster, calls `apply_and_wait`
with the `kubernetes` client's CustomObjectsApi (in-cluster credentials of the step's service account,
`distillery-launcher` in k8s/base/launcher-rbac.yaml). An object that already exists (the step retried) is
waited for, not created twice; one still running at the timeout is deleted, so no GPUs are left busy.
The API object is a parameter, so the logic runs against a fake in tests/test_kfp_kubernetes_job.py.

    python -c "from kubernetes import client, config; from pipelines_kfp import kubernetes_job as k; \
config.load_kube_config(); print(k.apply_and_wait(client.CustomObjectsApi(), OBJECT, 'ml', timeout_s=3600))"
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

CONFLICT = 409  # the API's answer to creating an object whose name exists


@dataclasses.dataclass(frozen=True)
class Kind:
    """Where the API serves a kind, and the condition type that means it succeeded."""

    group: str
    version: str
    plural: str
    succeeded: str
    failed: str = "Failed"


KINDS = {"JobSet": Kind("jobset.x-k8s.io", "v1alpha2", "jobsets", succeeded="Completed"),
         "TFJob": Kind("kubeflow.org", "v1", "tfjobs", succeeded="Succeeded")}


class JobFailed(RuntimeError):
    """The object reached its failure condition; the message has its reason and message."""


class JobTimeout(TimeoutError):
    """Neither condition within the timeout; the object was deleted."""


def true_condition(obj: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    """The object's status condition of that type when its status is "True", else None."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type and str(condition.get("status")) == "True":
            return condition
    return None


def apply_and_wait(api: Any, manifest: Mapping[str, Any], namespace: str, timeout_s: float, poll_s: float = 30.0,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                   log: Callable[[str], None] = print) -> Mapping[str, Any]:
    """Creates `manifest` (a JobSet or TFJob) in `namespace` and polls it until its success condition, which
    returns the object, or its failure condition or `timeout_s`, which raise.

    Raises:
      ValueError: a kind other than JobSet and TFJob.
      JobFailed: the object failed. JobTimeout: it did not finish in time (it is deleted).
      kubernetes.client.exceptions.ApiException: any other API error (forbidden, not found, ...).
    """
    kind_name = manifest.get("kind")
    if kind_name not in KINDS:
        raise ValueError(f"cannot wait for a {kind_name}: only {', '.join(KINDS)}")
    kind, name = KINDS[kind_name], manifest["metadata"]["name"]
    where = (kind.group, kind.version, namespace, kind.plural)
    shown = f"{kind_name} {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(*where, dict(manifest))
        log(f"created {shown}")
    except Exception as error:  # kubernetes.client.exceptions.ApiException carries the HTTP status
        if getattr(error, "status", None) != CONFLICT:
            raise
        log(f"{shown} exists already (a retried step): waiting for it")
    deadline = clock() + timeout_s
    while True:
        obj = api.get_namespaced_custom_object(*where, name)
        if true_condition(obj, kind.succeeded):
            log(f"{shown}: {kind.succeeded}")
            return obj
        failed = true_condition(obj, kind.failed)
        if failed:
            raise JobFailed(f"{shown} failed: {failed.get('reason', '')}: {failed.get('message', '')}".rstrip(": "))
        if clock() >= deadline:
            api.delete_namespaced_custom_object(*where, name, propagation_policy="Foreground")
            raise JobTimeout(f"{shown} did not finish within {timeout_s:g} s; deleted it")
        sleep(poll_s)
