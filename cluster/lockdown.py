"""Checks that a rendered manifest set lets no one in: what the pods expose, what they may do, what they may write.

The rules (docs/cluster.md, "Security"), for every pod of every kind (cluster/pods.py):
  - it carries app.kubernetes.io/part-of: distillery, so that the default-deny policy selects it;
  - no Kubernetes API token unless its service account is the pipeline launcher's;
  - every container: read-only root filesystem, no privilege escalation, all capabilities dropped, an
    emptyDir at /tmp and HOME inside a writable emptyDir (Flink's also at /opt/flink/log);
and for the namespace:
  - a NetworkPolicy denies all ingress to Distillery's pods; every other rule names its ports and lets in
    only Distillery's pods (one exception: the Flink operator on the Flink REST port), and every port a
    Distillery pod listens on is opened by one of them (else the jobs could not talk);
  - Flink: no job submission or cancellation from the web UI, every port pinned (none random);
  - RBAC: no cluster-wide roles; one Role, the launcher's, with only LAUNCHER_RULES, bound to its account
    alone; every other service account mounts no token.

No API server is needed: these are checks of the objects, not of an enforcing cluster.

    python -c "from cluster import lockdown, render; print(lockdown.problems(render.render_overlay('large')) or 'ok')"
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cluster import pods

PART_OF = {"app.kubernetes.io/part-of": "distillery"}
LAUNCHER_ACCOUNT = "distillery-launcher"
# (API group, resource) -> the verbs the launcher may use. pods/log serves only get (follow included).
LAUNCHER_RULES = {("jobset.x-k8s.io", "jobsets"): {"create", "get", "watch", "delete"},
                  ("kubeflow.org", "tfjobs"): {"create", "get", "watch", "delete"},
                  ("", "pods"): {"get", "list", "watch"},
                  ("", "pods/log"): {"get"}}
FLINK_REQUIRED_SETTINGS = {"web.submit.enable": "false", "web.cancel.enable": "false",
                           "kubernetes.operator.pod-template.merge-arrays-by-name": "true"}
# The Flink ports each role listens on (flinkConfiguration keys); all must be pinned to a fixed port.
FLINK_PORTS = {"jobManager": ("rest.port", "jobmanager.rpc.port", "blob.server.port"),
               "taskManager": ("taskmanager.rpc.port", "taskmanager.data.port")}
FLINK_WRITABLE = ("/tmp", "/opt/flink/log")
# Peers from outside Distillery that a policy may let in: the Flink operator, on the Flink REST port only.
EXTERNAL_PEERS = {("distillery-flink", 8081): {"namespaceSelector": {"matchLabels": {
    "kubernetes.io/metadata.name": "flink-operator"}}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "flink-kubernetes-operator"}}}}


def _name(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


def _of_kind(resources: Sequence[Mapping[str, Any]], *kinds: str) -> list[Mapping[str, Any]]:
    return [resource for resource in resources if resource.get("kind") in kinds]


def _service_account(resource: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    if resource.get("kind") == "FlinkDeployment":
        return resource["spec"].get("serviceAccount", "default")
    return spec.get("serviceAccountName", "default")


def _emptydir_mounts(container: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    empty = {volume["name"] for volume in spec.get("volumes", []) if "emptyDir" in volume}
    return [mount["mountPath"] for mount in container.get("volumeMounts", [])
            if mount.get("name") in empty and not mount.get("readOnly")]


def _inside(path: str, folders: Sequence[str]) -> bool:
    path = posixpath.normpath(path)
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


def container_problems(where: str, container: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    """What one container of a pod spec lacks (read-only root, no escalation, writable /tmp and HOME)."""
    found, name = [], f"{where}: container {container.get('name')}"
    context = container.get("securityContext", {})
    if context.get("readOnlyRootFilesystem") is not True:
        found.append(f"{name}: securityContext.readOnlyRootFilesystem is not true")
    if context.get("allowPrivilegeEscalation") is not False:
        found.append(f"{name}: securityContext.allowPrivilegeEscalation is not false")
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        found.append(f"{name}: securityContext.capabilities.drop lacks ALL")
    writable = _emptydir_mounts(container, spec)
    required = FLINK_WRITABLE if container.get("name") == pods.FLINK_MAIN_CONTAINER else ("/tmp",)
    found += [f"{name}: no writable emptyDir mounted at {path}" for path in required if path not in writable]
    home = [variable.get("value") for variable in container.get("env", []) if variable.get("name") == "HOME"]
    if not home or not home[-1] or not _inside(home[-1], writable):
        found.append(f"{name}: HOME ({home[-1] if home else 'unset'}) is not inside a writable emptyDir "
                     "(Keras, TensorFlow, pip and the JVM write there)")
    return found


def pod_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """The pod rules (module docstring) over every pod of every object."""
    found = []
    for resource in resources:
        for role, template in pods.pod_templates(resource):
            where, spec = f"{_name(resource)} {role}", template.get("spec", {})
            labels = template.get("metadata", {}).get("labels", {})
            if any(labels.get(key) != value for key, value in PART_OF.items()):
                found.append(f"{where}: pod template lacks the label {PART_OF} (the network policies select it)")
            token = spec.get("automountServiceAccountToken")
            if _service_account(resource, spec) == LAUNCHER_ACCOUNT:
                pass  # the one account that calls the API
            elif token is not False:
                found.append(f"{where}: automountServiceAccountToken is not false (its pods do not call the "
                             "Kubernetes API)")
            for container in spec.get("initContainers", []) + spec.get("containers", []):
                found += container_problems(where, container, spec)
    return found


def flink_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Web submission and cancellation off, the operator's merge by name, every Flink port pinned."""
    found = []
    for flink in _of_kind(resources, "FlinkDeployment"):
        configuration = flink["spec"].get("flinkConfiguration", {})
        for key, value in FLINK_REQUIRED_SETTINGS.items():
            if str(configuration.get(key)).lower() != value:
                found.append(f"{_name(flink)}: flinkConfiguration {key} is {configuration.get(key)!r}, not {value!r}")
        for key in (key for keys in FLINK_PORTS.values() for key in keys):
            if not str(configuration.get(key, "")).isdigit() or int(configuration[key]) == 0:
                found.append(f"{_name(flink)}: flinkConfiguration {key} is not pinned to a port (the network "
                             "policies must name it)")
    return found


def listening_ports(resource: Mapping[str, Any]) -> Iterator[tuple[dict[str, str], int, str]]:
    """(pod labels, port, what) of every port a pod of `resource` listens on."""
    for role, template in pods.pod_templates(resource):
        labels = template.get("metadata", {}).get("labels", {})
        for container in template.get("spec", {}).get("containers", []):
            for port in container.get("ports", []):
                yield labels, int(port["containerPort"]), f"{_name(resource)} {role} {container.get('name')}"
        if resource.get("kind") == "FlinkDeployment":
            configuration = resource["spec"].get("flinkConfiguration", {})
            for key in FLINK_PORTS[role]:
                if str(configuration.get(key, "")).isdigit():
                    yield labels, int(configuration[key]), f"{_name(resource)} {role} {key}"


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        return False  # matchExpressions: not used here, so not read
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def _only_distillery(selector: Mapping[str, Any]) -> bool:
    """A pod selector that can select only Distillery's pods: plain labels including PART_OF."""
    labels = selector.get("matchLabels", {})
    return set(selector) == {"matchLabels"} and all(labels.get(key) == value for key, value in PART_OF.items())


def _is_distillery_peer(peer: Mapping[str, Any]) -> bool:
    return set(peer) == {"podSelector"} and _only_distillery(peer["podSelector"])


def network_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Default deny, rules that let in only Distillery's pods on named ports, and every listening port opened."""
    found, policies = [], _of_kind(resources, "NetworkPolicy")
    denies = [policy for policy in policies if policy["spec"].get("podSelector") == {"matchLabels": PART_OF}
              and "Ingress" in policy["spec"].get("policyTypes", []) and not policy["spec"].get("ingress")]
    if not denies:
        found.append(f"no NetworkPolicy denies all ingress to the pods labelled {PART_OF}")
    opened: list[tuple[Mapping[str, Any], int]] = []  # (policy pod selector, port)
    for policy in policies:
        selector = policy["spec"].get("podSelector", {})
        if policy in denies:
            continue
        if not _only_distillery(selector):
            found.append(f"{_name(policy)}: its podSelector must select only Distillery's pods ({PART_OF})")
        for index, rule in enumerate(policy["spec"].get("ingress", [])):
            where = f"{_name(policy)} ingress[{index}]"
            ports = [int(port.get("port", 0)) for port in rule.get("ports", [])]
            if not ports or any(port <= 0 for port in ports):
                found.append(f"{where}: names no ports (it would open every port)")
            if not rule.get("from"):
                found.append(f"{where}: has no `from` (it would let in anyone)")
            for peer in rule.get("from", []):
                external = [EXTERNAL_PEERS.get((policy["metadata"]["name"], port)) for port in ports]
                if not _is_distillery_peer(peer) and not (external and all(allowed == peer for allowed in external)):
                    found.append(f"{where}: lets in {peer}, not only Distillery's pods ({PART_OF})")
            opened += [(selector, port) for port in ports]
    for resource in resources:
        for labels, port, what in listening_ports(resource):
            if not any(_selects(selector, labels) and port == opened_port for selector, opened_port in opened):
                found.append(f"{what}: listens on {port}, but no NetworkPolicy lets Distillery's pods reach it")
    return found


def rbac_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """No cluster-wide RBAC; only the launcher's Role, with only LAUNCHER_RULES, bound only to its account."""
    found = [f"{_name(resource)}: no cluster-wide RBAC" for resource in _of_kind(resources, "ClusterRole",
                                                                                 "ClusterRoleBinding")]
    for role in _of_kind(resources, "Role"):
        if role["metadata"]["name"] != LAUNCHER_ACCOUNT:
            found.append(f"{_name(role)}: the only Role is {LAUNCHER_ACCOUNT}'s")
        for index, rule in enumerate(role.get("rules", [])):
            if set(rule) - {"apiGroups", "resources", "verbs"}:
                found.append(f"{_name(role)} rules[{index}]: only apiGroups, resources and verbs")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    allowed = LAUNCHER_RULES.get((group, resource), set())
                    extra = sorted(set(rule.get("verbs", [])) - allowed)
                    if extra:
                        found.append(f"{_name(role)} rules[{index}]: {extra} on {group or 'core'}/{resource} "
                                     f"(allowed: {sorted(allowed)})")
    for binding in _of_kind(resources, "RoleBinding"):
        subjects = [(subject.get("kind"), subject.get("name")) for subject in binding.get("subjects", [])]
        if binding.get("roleRef", {}).get("name") != LAUNCHER_ACCOUNT or subjects != [
                ("ServiceAccount", LAUNCHER_ACCOUNT)]:
            found.append(f"{_name(binding)}: binds {binding.get('roleRef', {}).get('name')} to {subjects}; only "
                         f"the {LAUNCHER_ACCOUNT} Role to its own service account")
    for account in _of_kind(resources, "ServiceAccount"):
        launcher = account["metadata"]["name"] == LAUNCHER_ACCOUNT
        if account.get("automountServiceAccountToken") is not launcher:
            found.append(f"{_name(account)}: automountServiceAccountToken is not {str(launcher).lower()}")
    return found


def problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every rule broken by a rendered manifest set (empty: it lets no one in)."""
    return (pod_problems(resources) + flink_problems(resources) + network_problems(resources)
            + rbac_problems(resources))
