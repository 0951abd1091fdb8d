"""The training object one student's pipeline step creates on a cluster: the JobSet (or TFJob) of k8s/, as
cluster/render.py renders an overlay, with the chain's own trainer arguments.

The manifest gives everything about the pods (image, GPUs, security context, TF_CONFIG wiring); the step
gives the name (one per student and output, so a retried step finds its own object), the namespace and the
arguments: `configs.chain.arguments` of the student's train stage plus `--strategy=multi_worker`, the same
flags `make demo` passes to `distillery-train`.

    python -c "from pipelines_kfp import training_job as t; print(t.training_object('jobset', 'distillery-hard-1', \
'ml', ['--train=gs://b/l.summary.json', '--model_dir=gs://b/m'])['spec']['replicatedJobs'][0]['name'])"
"""

from __future__ import annotations

import copy
import hashlib
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

from cluster import render

# --training value -> (the kind, the `--job` of cluster/render.py that holds it).
JOBS = {"jobset": ("JobSet", "train"), "tfjob": ("TFJob", "train-tfjob")}
TRAINER = "distillery-train"
MAX_NAME = 40  # JobSet pod host names add "-<replicated job>-<index>-<index>" within DNS's 63 characters


def object_name(student: str, model_dir: str) -> str:
    """`distillery-<student>-<hash of the output>`: a DNS label, the same for a retry of the same step."""
    digest = hashlib.sha256(model_dir.encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9-]+", "-", f"distillery-{student}".lower()).strip("-")
    return f"{stem[:MAX_NAME - 9].rstrip('-')}-{digest}"


def k8s_folder() -> pathlib.Path:
    """The k8s/ tree: $DISTILLERY_K8S_DIR (the image sets it: the package is installed, k8s/ is beside it), else
    the checkout's."""
    return pathlib.Path(os.environ.get("DISTILLERY_K8S_DIR") or render.K8S_DIR)


def training_object(training: str, name: str, namespace: str, trainer_args: Sequence[str], overlay: str = "small",
                    image: str = "", k8s_dir: pathlib.Path | None = None) -> dict[str, Any]:
    """The overlay's JobSet (`training="jobset"`) or TFJob (`"tfjob"`), unsuspended, named `name` in
    `namespace`, every trainer container running `distillery-train` with `trainer_args` on all replicas
    (and `image`, when given, instead of the overlay's).

    Raises:
      ValueError: an unknown `training`, or an overlay without that object or without a trainer container.
    """
    if training not in JOBS:
        raise ValueError(f"--training={training}: a cluster training is one of {', '.join(JOBS)}")
    kind, job = JOBS[training]
    found = [resource for resource in render.render(overlay, job, k8s_dir=k8s_dir or k8s_folder())
             if resource["kind"] == kind]
    if len(found) != 1:
        raise ValueError(f"overlay {overlay}: expected one {kind} (distillery-submit render --job={job}), found {len(found)}")
    obj = copy.deepcopy(found[0])
    obj["metadata"] = {**obj["metadata"], "name": name, "namespace": namespace}
    if kind == "TFJob":
        obj["spec"].setdefault("runPolicy", {})["suspend"] = False
    else:
        obj["spec"]["suspend"] = False
    trainers = [container for container in render.iter_containers(obj) if container.get("command") == [TRAINER]]
    if not trainers:
        raise ValueError(f"overlay {overlay}: the {kind} has no container whose command is {TRAINER}")
    for container in trainers:
        container["args"] = [*trainer_args, "--strategy=multi_worker"]
        if image:
            container["image"] = image
    return obj
