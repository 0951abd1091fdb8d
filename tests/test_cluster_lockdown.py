"""The cluster surface lets no one in: every pod of every overlay and job passes cluster/lockdown.py, and the
checker catches each setting taken away from a rendered object (so a regression in k8s/ fails here).

Checked as objects: there is no API server here, so NetworkPolicies and RBAC are not enforced, only read.
"""

import copy

import pytest

from cluster import lockdown, pods, render

OVERLAYS = ("base",) + render.OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_is_locked_down(overlay):
    resources = render.render_overlay(overlay)
    assert lockdown.problems(resources) == []
    kinds = [r["kind"] for r in resources]
    assert kinds.count("NetworkPolicy") == 4 and kinds.count("Role") == 1 and kinds.count("RoleBinding") == 1
    assert sum(1 for resource in resources for _ in pods.pod_templates(resource)) == 12


@pytest.mark.parametrize("job", render.JOBS)
def test_every_jobs_render_is_locked_down_and_carries_the_policies(job):
    resources = render.render("large", job, {"namespace": "ml", "workers": "3"})
    assert lockdown.problems(resources) == []
    assert {r["metadata"]["name"] for r in resources if r["kind"] == "NetworkPolicy"} == {
        "distillery-default-deny-ingress", "distillery-beam-job-server", "distillery-flink", "distillery-train"}


def test_every_pod_has_no_token_a_read_only_root_and_writable_tmp_and_home():
    for resource in render.render_overlay("small"):
        for role, template in pods.pod_templates(resource):
            spec = template["spec"]
            assert spec["automountServiceAccountToken"] is False, (resource["metadata"]["name"], role)
            assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "distillery"
            volumes = {volume["name"]: volume for volume in spec["volumes"]}
            for container in spec["containers"]:
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
                mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], container["name"]
                assert {"name": "HOME", "value": "/tmp"} in container["env"], container["name"]


def test_flink_web_submission_and_cancellation_are_off():
    (flink,) = [r for r in render.render_overlay("large") if r["kind"] == "FlinkDeployment"]
    configuration = flink["spec"]["flinkConfiguration"]
    assert configuration["web.submit.enable"] == "false" and configuration["web.cancel.enable"] == "false"


def test_the_launcher_is_the_only_account_with_a_token_and_may_do_only_what_it_needs():
    resources = render.render("small", "launcher")
    accounts = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ServiceAccount"}
    assert {name: account["automountServiceAccountToken"] for name, account in accounts.items()} == {
        "distillery": False, "distillery-launcher": True}
    (role,) = [r for r in resources if r["kind"] == "Role"]
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == lockdown.LAUNCHER_RULES
    (binding,) = [r for r in resources if r["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "distillery-launcher"}]


def _find(resources, kind, name=None):
    return next(r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name))


def _container(resources, kind, name, index=0):
    resource = _find(resources, kind, name)
    if kind == "JobSet":
        return resource["spec"]["replicatedJobs"][index]["template"]["spec"]["template"]["spec"]["containers"][0]
    return resource["spec"]["template"]["spec"]["containers"][0]


def _pop_env(container, name):
    container["env"] = [variable for variable in container["env"] if variable["name"] != name]


def _drop_policy(resources, name):
    resources.remove(_find(resources, "NetworkPolicy", name))


def _flink(resources):
    return _find(resources, "FlinkDeployment")


def _sidecar(resources):
    return _flink(resources)["spec"]["taskManager"]["podTemplate"]["spec"]["containers"][1]


# Each takes one setting away from (or loosens one in) the rendered `large` objects; the checker must name it.
MUTATIONS = {
    "token on a Job": (lambda r: _find(r, "Job", "distillery-quantize")["spec"]["template"]["spec"].pop(
        "automountServiceAccountToken"), "Job/distillery-quantize Job: automountServiceAccountToken"),
    "token on a JobSet worker": (lambda r: _find(r, "JobSet")["spec"]["replicatedJobs"][1]["template"]["spec"][
        "template"]["spec"].update(automountServiceAccountToken=True), "JobSet/distillery-train worker: automount"),
    "token on Flink": (lambda r: _flink(r)["spec"]["podTemplate"]["spec"].pop("automountServiceAccountToken"),
                       "FlinkDeployment/distillery-flink jobManager: automount"),
    "writable root in the sidecar": (lambda r: _sidecar(r)["securityContext"].pop("readOnlyRootFilesystem"),
                                     "taskManager: container beam-worker-pool: securityContext.readOnlyRootFilesystem"),
    "writable root in the job server": (
        lambda r: _container(r, "Deployment", "distillery-beam-job-server")["securityContext"].update(
            readOnlyRootFilesystem=False), "container job-server: securityContext.readOnlyRootFilesystem"),
    "no /tmp for the trainer": (lambda r: _container(r, "JobSet", "distillery-train").pop("volumeMounts"),
                                "chief: container trainer: no writable emptyDir mounted at /tmp"),
    "/tmp on the node": (lambda r: _find(r, "Job", "distillery-extract")["spec"]["template"]["spec"].update(
        volumes=[{"name": "tmp", "hostPath": {"path": "/tmp"}}]),
        "Job/distillery-extract Job: container extract: no writable emptyDir mounted at /tmp"),
    "no HOME for the benchmark": (lambda r: _pop_env(_container(r, "Job", "distillery-benchmark"), "HOME"),
                                  "container benchmark: HOME (unset)"),
    "HOME on the root filesystem": (lambda r: _container(r, "Job", "distillery-factorize")["env"][0].update(
        value="/home/distillery"), "container factorize: HOME (/home/distillery)"),
    "no Flink log folder": (lambda r: _flink(r)["spec"]["podTemplate"]["spec"]["containers"][0]["volumeMounts"].pop(),
                            "container flink-main-container: no writable emptyDir mounted at /opt/flink/log"),
    "escalation allowed": (lambda r: _container(r, "Job", "distillery-extract-eval")["securityContext"].pop(
        "allowPrivilegeEscalation"), "container extract: securityContext.allowPrivilegeEscalation"),
    "a pod the default deny does not select": (
        lambda r: _find(r, "Job", "distillery-benchmark")["spec"]["template"]["metadata"]["labels"].pop(
            "app.kubernetes.io/part-of"), "Job/distillery-benchmark Job: pod template lacks the label"),
    "web submission on": (lambda r: _flink(r)["spec"]["flinkConfiguration"].pop("web.submit.enable"),
                          "flinkConfiguration web.submit.enable is None"),
    "web cancellation on": (lambda r: _flink(r)["spec"]["flinkConfiguration"].update({"web.cancel.enable": "true"}),
                            "flinkConfiguration web.cancel.enable is 'true'"),
    "a random Flink data port": (lambda r: _flink(r)["spec"]["flinkConfiguration"].pop("taskmanager.data.port"),
                                 "taskmanager.data.port is not pinned"),
    "no default deny": (lambda r: _drop_policy(r, "distillery-default-deny-ingress"),
                        "no NetworkPolicy denies all ingress"),
    "the job server open to every namespace": (
        lambda r: _find(r, "NetworkPolicy", "distillery-beam-job-server")["spec"]["ingress"][0]["from"].append(
            {"namespaceSelector": {}}), "distillery-beam-job-server ingress[0]: lets in {'namespaceSelector': {}}"),
    "the worker pool open to an address range": (
        lambda r: _find(r, "NetworkPolicy", "distillery-flink")["spec"]["ingress"][1]["from"].append(
            {"ipBlock": {"cidr": "0.0.0.0/0"}}), "distillery-flink ingress[1]: lets in {'ipBlock'"),
    "the operator's exception on another port": (
        lambda r: _find(r, "NetworkPolicy", "distillery-flink")["spec"]["ingress"][2]["ports"].append(
            {"protocol": "TCP", "port": 6123}), "distillery-flink ingress[2]: lets in {'namespaceSelector'"),
    "a rule on every port": (lambda r: _find(r, "NetworkPolicy", "distillery-train")["spec"]["ingress"][0].pop(
        "ports"), "distillery-train ingress[0]: names no ports"),
    "a rule from anyone": (lambda r: _find(r, "NetworkPolicy", "distillery-train")["spec"]["ingress"][0].pop(
        "from"), "distillery-train ingress[0]: has no `from`"),
    "training unreachable": (lambda r: _drop_policy(r, "distillery-train"),
                             "JobSet/distillery-train chief trainer: listens on 2222"),
    "the worker pool unreachable": (
        lambda r: _find(r, "NetworkPolicy", "distillery-flink")["spec"]["ingress"][1]["ports"].pop(),
        "taskManager beam-worker-pool: listens on 50000"),
    "a policy over every pod": (lambda r: _find(r, "NetworkPolicy", "distillery-train")["spec"].update(
        podSelector={}), "NetworkPolicy/distillery-train: its podSelector must select only Distillery's pods"),
    "a wider launcher": (lambda r: _find(r, "Role")["rules"][0]["verbs"].append("list"),
                         "['list'] on jobset.x-k8s.io/jobsets"),
    "a launcher with every verb": (lambda r: _find(r, "Role")["rules"][2]["verbs"].append("*"),
                                   "['*'] on core/pods"),
    "a launcher that reads secrets": (lambda r: _find(r, "Role")["rules"][2]["resources"].append("secrets"),
                                      "on core/secrets (allowed: [])"),
    "cluster-wide RBAC": (lambda r: r.append({"kind": "ClusterRoleBinding", "metadata": {"name": "x"}}),
                          "ClusterRoleBinding/x: no cluster-wide RBAC"),
    "the launcher's role bound to every job": (
        lambda r: _find(r, "RoleBinding")["subjects"].append({"kind": "ServiceAccount", "name": "distillery"}),
        "RoleBinding/distillery-launcher: binds"),
    "a token for every job": (lambda r: _find(r, "ServiceAccount", "distillery").pop("automountServiceAccountToken"),
                              "ServiceAccount/distillery: automountServiceAccountToken is not false"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_the_checker_catches_each_setting_taken_away(name):
    mutate, message = MUTATIONS[name]
    resources = copy.deepcopy(render.render_overlay("large"))
    assert lockdown.problems(resources) == []
    mutate(resources)
    found = lockdown.problems(resources)
    assert any(message in problem for problem in found), found
