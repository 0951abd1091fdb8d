"""TF_CONFIG for a JobSet pod, built from what JobSet tells the pod about itself.

A Kubeflow TFJob's operator writes each replica's TF_CONFIG; a JobSet (jobset.x-k8s.io/v1alpha2, the
TFJob's successor, docs/decisions/015-jobset-for-training.md) does not, but it gives every pod a stable
hostname, `<jobset>-<replicated job>-<job index>-<pod index>.<subdomain>` (the subdomain is the JobSet's
headless service, named after the JobSet), and annotates the pod with its place. k8s/base/train-jobset.yaml
passes those annotations in as environment variables with the downward API:

    JOBSET_NAME              jobset.sigs.k8s.io/jobset-name
    REPLICATED_JOB_NAME      jobset.sigs.k8s.io/replicatedjob-name     chief or worker
    JOB_INDEX                jobset.sigs.k8s.io/job-index              this job within its replicated job
    REPLICATED_JOB_REPLICAS  jobset.sigs.k8s.io/replicatedjob-replicas jobs of this replicated job
    GLOBAL_REPLICAS          jobset.sigs.k8s.io/global-replicas        jobs of the whole JobSet
    JOB_COMPLETION_INDEX     (set by Kubernetes for Indexed Jobs)       the pod within its job: always 0 here
    DISTILLERY_TF_PORT       (the manifest's own, default 2222)         where each worker listens

The rule: replicated jobs `chief` (at most one job) and `worker`, one pod per job; a pod's own replicated job
gives its own count and GLOBAL_REPLICAS minus it the other's. cluster/jobset_tf_config.py is the same rule
applied to a rendered manifest (tests check the two agree).

    JOBSET_NAME=t REPLICATED_JOB_NAME=worker JOB_INDEX=0 REPLICATED_JOB_REPLICAS=1 GLOBAL_REPLICAS=2 \
      python -c "import os; from trainer import cluster_resolver; print(cluster_resolver.tf_config_from_jobset(os.environ))"
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

DEFAULT_PORT = 2222
TASK_TYPES = ("chief", "worker")


class JobSetEnvironmentError(ValueError):
    """A JobSet pod's environment that does not describe a chief + workers cluster; the message names the variable."""


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise JobSetEnvironmentError(f"{name}={value!r}: expected an integer (the JobSet pod annotation, passed "
                                     "in with the downward API)") from None


def tf_config_from_jobset(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The TF_CONFIG of this pod as a dict, or None outside a JobSet (no JOBSET_NAME).

    Raises:
        JobSetEnvironmentError: a replicated job other than chief/worker, more than one chief, more than one pod
            per job, or a missing or non-integer variable.
    """
    jobset = environ.get("JOBSET_NAME")
    if not jobset:
        return None
    task_type = environ.get("REPLICATED_JOB_NAME", "")
    if task_type not in TASK_TYPES:
        raise JobSetEnvironmentError(f"REPLICATED_JOB_NAME={task_type!r}: the trainer's JobSet has replicated jobs "
                                     f"{' and '.join(TASK_TYPES)}")
    task_index = _integer(environ, "JOB_INDEX")
    own = _integer(environ, "REPLICATED_JOB_REPLICAS")
    total = _integer(environ, "GLOBAL_REPLICAS")
    pod_index = _integer(environ, "JOB_COMPLETION_INDEX", default=0)
    port = _integer(environ, "DISTILLERY_TF_PORT", default=DEFAULT_PORT)
    if pod_index != 0:
        raise JobSetEnvironmentError(f"JOB_COMPLETION_INDEX={pod_index}: one pod per job (parallelism 1), so that "
                                     "each job is one task of the cluster")
    counts = {task_type: own, ("worker" if task_type == "chief" else "chief"): total - own}
    if counts["chief"] not in (0, 1) or counts["worker"] < 0 or not 0 <= task_index < own:
        raise JobSetEnvironmentError(f"REPLICATED_JOB_NAME={task_type} JOB_INDEX={task_index} "
                                     f"REPLICATED_JOB_REPLICAS={own} GLOBAL_REPLICAS={total}: expected at most one "
                                     "chief job and the index within its replicated job")
    cluster = {kind: [f"{jobset}-{kind}-{index}-0.{jobset}:{port}" for index in range(counts[kind])]
               for kind in TASK_TYPES if counts[kind]}
    return {"cluster": cluster, "task": {"type": task_type, "index": task_index}, "environment": "cloud"}


def set_tf_config_from_jobset(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Sets TF_CONFIG from the JobSet variables when none is given; True when it did (a given one is kept)."""
    if "TF_CONFIG" in environ:
        return False
    config = tf_config_from_jobset(environ)
    if config is None:
        return False
    environ["TF_CONFIG"] = json.dumps(config, separators=(",", ":"))
    return True
