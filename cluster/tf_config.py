"""The TF_CONFIG that the Kubeflow training operator gives each replica of a TFJob.

Reproduces the operator's rule (kubeflow/training-operator, pkg/controller.v1/tensorflow:
genClusterSpec / genTFConfigJSONStr) so that a rendered TFJob can be checked offline and its
multi-worker set-up run locally: every replica type but Evaluator becomes a lower-case job in
`cluster`, replica i of type T of job J in namespace N listens at `J-t-i.N.svc:PORT` (PORT: the
`tfjob-port` port of the `tensorflow` container, 2222 by default), and each pod gets its own
`task` {type, index} and `environment: cloud`.

    python -c "from cluster import render, tf_config; \
      print(tf_config.tf_configs(render.render('small', 'train')[-1]))"
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

DEFAULT_PORT = 2222
PORT_NAME = "tfjob-port"
CONTAINER_NAME = "tensorflow"


def replica_port(replica_spec: Mapping[str, Any]) -> int:
    """The port of the `tensorflow` container named `tfjob-port`, else 2222 (the operator's rule)."""
    for container in replica_spec["template"]["spec"]["containers"]:
        if container.get("name") == CONTAINER_NAME:
            for port in container.get("ports", []):
                if port.get("name") == PORT_NAME:
                    return int(port["containerPort"])
    return DEFAULT_PORT


def cluster_spec(tfjob: Mapping[str, Any], namespace: str = "default") -> dict[str, list[str]]:
    """{'chief': ['NAME-chief-0.NS.svc:2222'], 'worker': [...], ...} for a TFJob manifest."""
    name = tfjob["metadata"]["name"]
    spec: dict[str, list[str]] = {}
    for replica_type, replica_spec in tfjob["spec"]["tfReplicaSpecs"].items():
        if replica_type == "Evaluator":
            continue  # Not part of the training cluster.
        job = replica_type.lower()
        port = replica_port(replica_spec)
        spec[job] = [f"{name}-{job}-{index}.{namespace}.svc:{port}"
                     for index in range(int(replica_spec.get("replicas", 1)))]
    return spec


def tf_configs(tfjob: Mapping[str, Any], namespace: str = "default") -> list[dict[str, Any]]:
    """The TF_CONFIG (as a dict) of every replica, chief first, then workers by index."""
    spec = cluster_spec(tfjob, namespace)
    order = sorted(spec, key=lambda job: (job != "chief", job))
    return [{"cluster": spec, "task": {"type": job, "index": index}, "environment": "cloud"}
            for job in order for index in range(len(spec[job]))]


def localize(config: Mapping[str, Any], addresses: Mapping[str, str]) -> dict[str, Any]:
    """The same TF_CONFIG with each service address replaced (e.g. by 127.0.0.1:PORT).

    Raises:
        KeyError: an address of the cluster has no replacement.
    """
    cluster = {job: [addresses[address] for address in members] for job, members in config["cluster"].items()}
    return {**config, "cluster": cluster}


def to_env(config: Mapping[str, Any]) -> str:
    """The TF_CONFIG environment value (compact JSON, as the operator writes it)."""
    return json.dumps(config, separators=(",", ":"))
