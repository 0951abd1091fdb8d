"""The TF_CONFIG each pod of the training JobSet (k8s/base/train-jobset.yaml) gets, from JobSet's hostname rule.

JobSet (kubernetes-sigs/jobset, jobset.x-k8s.io/v1alpha2) makes `replicas` Indexed Jobs of each replicated job,
named `<jobset>-<replicated job>-<job index>`, and with `network.enableDNSHostnames` gives their pods the
hostname `<job name>-<pod index>` in the subdomain `<jobset>` (a headless service it creates). It annotates
each pod with jobset.sigs.k8s.io/jobset-name, replicatedjob-name, job-index, replicatedjob-replicas and
global-replicas; the manifest passes them in with the downward API, and the trainer
(trainer/cluster_resolver.py) builds TF_CONFIG from them. This module applies the same rule to a rendered
manifest, so that it can be checked offline and its cluster run locally
(tests/test_cluster_jobset.py).

    python -c "from cluster import render, jobset_tf_config as j; \
      print(j.tf_configs([r for r in render.render('small', 'train') if r['kind'] == 'JobSet'][0]))"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONTAINER_NAME = "trainer"
PORT_VARIABLE = "DISTILLERY_TF_PORT"
DEFAULT_PORT = 2222
# The pod annotations JobSet sets and the variables the manifest passes them in as (trainer/cluster_resolver.py).
ANNOTATION_VARIABLES = {
    "JOBSET_NAME": "jobset.sigs.k8s.io/jobset-name",
    "REPLICATED_JOB_NAME": "jobset.sigs.k8s.io/replicatedjob-name",
    "JOB_INDEX": "jobset.sigs.k8s.io/job-index",
    "REPLICATED_JOB_REPLICAS": "jobset.sigs.k8s.io/replicatedjob-replicas",
    "GLOBAL_REPLICAS": "jobset.sigs.k8s.io/global-replicas",
}


def trainer_container(replicated_job: Mapping[str, Any]) -> Mapping[str, Any]:
    """The `trainer` container of a replicated job's pod template."""
    (container,) = [container for container in replicated_job["template"]["spec"]["template"]["spec"]["containers"]
                    if container.get("name") == CONTAINER_NAME]
    return container


def port(replicated_job: Mapping[str, Any]) -> int:
    """The trainer's DISTILLERY_TF_PORT (2222 where unset), as the trainer reads it."""
    for variable in trainer_container(replicated_job).get("env", []):
        if variable.get("name") == PORT_VARIABLE:
            return int(variable["value"])
    return DEFAULT_PORT


def subdomain(jobset: Mapping[str, Any]) -> str:
    """The pods' DNS subdomain: spec.network.subdomain, else the JobSet's name (JobSet's default)."""
    return jobset["spec"].get("network", {}).get("subdomain") or jobset["metadata"]["name"]


def hostname(jobset_name: str, replicated_job: str, job_index: int, pod_index: int) -> str:
    """`<jobset>-<replicated job>-<job index>-<pod index>`: an Indexed Job's pod hostname under JobSet."""
    return f"{jobset_name}-{replicated_job}-{job_index}-{pod_index}"


def _pods(replicated_job: Mapping[str, Any]) -> int:
    return int(replicated_job["template"]["spec"].get("parallelism", 1))


def cluster_spec(jobset: Mapping[str, Any]) -> dict[str, list[str]]:
    """{'chief': ['NAME-chief-0-0.NAME:2222'], 'worker': [...]}: every pod's address, job by job."""
    name, domain = jobset["metadata"]["name"], subdomain(jobset)
    spec: dict[str, list[str]] = {}
    for replicated_job in jobset["spec"]["replicatedJobs"]:
        kind = replicated_job["name"]
        addresses = [f"{hostname(name, kind, job, pod)}.{domain}:{port(replicated_job)}"
                     for job in range(int(replicated_job.get("replicas", 1)))
                     for pod in range(_pods(replicated_job))]
        if addresses:  # a replicated job scaled to 0 is no part of the cluster
            spec[kind] = addresses
    return spec


def tf_configs(jobset: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The TF_CONFIG (as a dict) of every pod, chief first, then the workers by index."""
    spec = cluster_spec(jobset)
    order = sorted(spec, key=lambda kind: (kind != "chief", kind))
    return [{"cluster": spec, "task": {"type": kind, "index": index}, "environment": "cloud"}
            for kind in order for index in range(len(spec[kind]))]


def pod_environment(jobset: Mapping[str, Any], replicated_job_name: str, job_index: int,
                    pod_index: int = 0) -> dict[str, str]:
    """The variables one pod's trainer sees: the annotations JobSet sets, as the manifest's downward API passes
    them, Kubernetes' JOB_COMPLETION_INDEX, and the manifest's literal values.

    Raises:
        ValueError: the manifest passes an annotation under another name than trainer/cluster_resolver.py reads.
    """
    (replicated_job,) = [job for job in jobset["spec"]["replicatedJobs"] if job["name"] == replicated_job_name]
    total = sum(int(job.get("replicas", 1)) for job in jobset["spec"]["replicatedJobs"])
    annotations = {
        "jobset.sigs.k8s.io/jobset-name": jobset["metadata"]["name"],
        "jobset.sigs.k8s.io/replicatedjob-name": replicated_job_name,
        "jobset.sigs.k8s.io/job-index": str(job_index),
        "jobset.sigs.k8s.io/replicatedjob-replicas": str(int(replicated_job.get("replicas", 1))),
        "jobset.sigs.k8s.io/global-replicas": str(total),
    }
    environment = {"JOB_COMPLETION_INDEX": str(pod_index)}
    for variable in trainer_container(replicated_job).get("env", []):
        if "value" in variable:
            environment[variable["name"]] = str(variable["value"])
            continue
        field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        if field.startswith("metadata.annotations['"):
            annotation = field[len("metadata.annotations['"):-2]
            if ANNOTATION_VARIABLES.get(variable["name"]) != annotation:
                raise ValueError(f"env {variable['name']} <- {annotation}: trainer/cluster_resolver.py reads "
                                 f"{ANNOTATION_VARIABLES}")
            environment[variable["name"]] = annotations[annotation]
    return environment
