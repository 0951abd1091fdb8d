"""The training JobSet: the TF_CONFIG each pod gets from JobSet's hostnames, and two real processes training from it.

cluster/jobset_tf_config.py applies JobSet's hostname rule to the rendered manifest; trainer/cluster_resolver.py
builds TF_CONFIG inside a pod from the annotations the manifest passes in. Here both are checked against a
hand-written TF_CONFIG and against each other for every pod, then the chief's and the worker's TF_CONFIGs
(hostnames swapped for 127.0.0.1 ports) drive two processes that run the JobSet container's own arguments
through distillery-train's flags (tests/cluster_train_main.py) to identical weights.
"""

import json
import os
import pathlib
import subprocess
import sys

import cluster_fixtures
import numpy as np
import pytest
from trainer_fixtures import free_ports

from cluster import job_arguments, jobset_tf_config, render, tf_config
from trainer import cluster_resolver

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HELPER = REPO_ROOT / "tests" / "cluster_train_main.py"


def _jobset(overlay="small", parameters=None):
    (jobset,) = [r for r in render.render(overlay, "train", parameters) if r["kind"] == "JobSet"]
    return jobset


def _pods(jobset):
    """(replicated job, job index) of every pod, chief first: the order of tf_configs."""
    return [(job["name"], index) for job in sorted(jobset["spec"]["replicatedJobs"], key=lambda j: j["name"] != "chief")
            for index in range(job["replicas"])]


def test_tf_configs_follow_jobsets_hostname_rule():
    configs = jobset_tf_config.tf_configs(_jobset("small"))
    cluster = {"chief": ["distillery-train-chief-0-0.distillery-train:2222"],
               "worker": ["distillery-train-worker-0-0.distillery-train:2222"]}
    assert configs == [
        {"cluster": cluster, "task": {"type": "chief", "index": 0}, "environment": "cloud"},
        {"cluster": cluster, "task": {"type": "worker", "index": 0}, "environment": "cloud"},
    ]
    large = jobset_tf_config.cluster_spec(_jobset("large"))
    assert len(large["chief"]) == 1 and large["worker"][6] == "distillery-train-worker-6-0.distillery-train:2222"


@pytest.mark.parametrize("overlay, parameters", [("small", None), ("large", None), ("small", {"workers": "3"}),
                                                 ("base", {"workers": "0"})])
def test_the_trainer_builds_the_same_tf_config_from_each_pods_annotations(overlay, parameters):
    jobset = _jobset(overlay, parameters)
    configs = jobset_tf_config.tf_configs(jobset)
    assert len(configs) == len(_pods(jobset))
    for (replicated_job, index), config in zip(_pods(jobset), configs):
        environment = jobset_tf_config.pod_environment(jobset, replicated_job, index)
        assert cluster_resolver.tf_config_from_jobset(environment) == config, (replicated_job, index)


def test_the_manifest_passes_jobsets_annotations_with_the_downward_api():
    jobset = _jobset("small")
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True
    assert "subdomain" not in jobset["spec"]["network"]  # the trainer assumes JobSet's default, the JobSet's name
    for replicated_job in jobset["spec"]["replicatedJobs"]:
        job_spec = replicated_job["template"]["spec"]
        assert (job_spec["completionMode"], job_spec["parallelism"], job_spec["completions"]) == ("Indexed", 1, 1)
        container = jobset_tf_config.trainer_container(replicated_job)
        passed = {variable["name"]: variable["valueFrom"]["fieldRef"]["fieldPath"]
                  for variable in container["env"] if "valueFrom" in variable}
        assert passed == {name: f"metadata.annotations['{annotation}']"
                          for name, annotation in jobset_tf_config.ANNOTATION_VARIABLES.items()}
        (port,) = container["ports"]
        assert port["containerPort"] == jobset_tf_config.port(replicated_job) == cluster_resolver.DEFAULT_PORT
    assert {job["name"] for job in jobset["spec"]["replicatedJobs"]} == set(cluster_resolver.TASK_TYPES)


@pytest.mark.parametrize("change, message", [
    ({"REPLICATED_JOB_NAME": "ps"}, "REPLICATED_JOB_NAME='ps'"),
    ({"JOB_INDEX": "x"}, "JOB_INDEX='x'"),
    ({"JOB_COMPLETION_INDEX": "1"}, "one pod per job"),
    ({"REPLICATED_JOB_NAME": "worker", "REPLICATED_JOB_REPLICAS": "1", "GLOBAL_REPLICAS": "4"}, "at most one chief"),
    ({"JOB_INDEX": "1"}, "at most one chief"),
])
def test_inconsistent_jobset_variables_are_refused_naming_them(change, message):
    environment = {"JOBSET_NAME": "t", "REPLICATED_JOB_NAME": "chief", "JOB_INDEX": "0",
                   "REPLICATED_JOB_REPLICAS": "1", "GLOBAL_REPLICAS": "2", **change}
    with pytest.raises(cluster_resolver.JobSetEnvironmentError, match=message):
        cluster_resolver.tf_config_from_jobset(environment)


def test_tf_config_is_set_only_in_a_jobset_pod_without_one():
    environment = {"JOBSET_NAME": "t", "REPLICATED_JOB_NAME": "worker", "JOB_INDEX": "1",
                   "REPLICATED_JOB_REPLICAS": "2", "GLOBAL_REPLICAS": "2", "DISTILLERY_TF_PORT": "3000"}
    assert cluster_resolver.set_tf_config_from_jobset(environment) is True
    assert json.loads(environment["TF_CONFIG"]) == {
        "cluster": {"worker": ["t-worker-0-0.t:3000", "t-worker-1-0.t:3000"]},
        "task": {"type": "worker", "index": 1}, "environment": "cloud"}
    given = {**environment, "TF_CONFIG": "{}"}
    assert cluster_resolver.set_tf_config_from_jobset(given) is False and given["TF_CONFIG"] == "{}"
    assert cluster_resolver.set_tf_config_from_jobset({}) is False


def test_make_strategy_sets_tf_config_from_the_jobset_before_building_the_strategy(monkeypatch):
    import tensorflow as tf

    from trainer import loop

    seen = []
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: seen.append(os.environ.get("TF_CONFIG")))
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name, value in jobset_tf_config.pod_environment(_jobset("small"), "worker", 0).items():
        monkeypatch.setenv(name, value)
    loop.make_strategy("multi_worker")
    assert json.loads(seen[0]) == jobset_tf_config.tf_configs(_jobset("small"))[1]


@pytest.mark.slow
def test_jobset_tf_configs_drive_two_trainers_to_identical_weights(tmp_path):
    """The JobSet container's own arguments (a tiny run from the rendered parameters, nothing appended) as the
    chief and the worker, each with its pod's JobSet variables and its TF_CONFIG localized to 127.0.0.1."""
    resources = render.render("small", "train", cluster_fixtures.tiny_training(tmp_path))
    (jobset,) = [r for r in resources if r["kind"] == "JobSet"]
    configs = jobset_tf_config.tf_configs(jobset)
    addresses = configs[0]["cluster"]["chief"] + configs[0]["cluster"]["worker"]
    local = dict(zip(addresses, (f"127.0.0.1:{port}" for port in free_ports(len(addresses)))))
    configmaps = job_arguments.configmap_data(resources)
    processes = []
    for (replicated_job, index), config in zip(_pods(jobset), configs):
        (template,) = [job for job in jobset["spec"]["replicatedJobs"] if job["name"] == replicated_job]
        args = job_arguments.expanded_args(jobset_tf_config.trainer_container(template), configmaps)
        assert "--strategy=multi_worker" in args and "--steps=3" in args and "--batch_size=8" in args
        assert not any("$(" in arg for arg in args), args
        environment = dict(os.environ, **jobset_tf_config.pod_environment(jobset, replicated_job, index),
                           TF_CONFIG=tf_config.to_env(tf_config.localize(config, local)),
                           PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        weights = tmp_path / f"weights-{replicated_job}-{index}.npz"
        processes.append((weights, subprocess.Popen([sys.executable, str(HELPER), str(weights), *args],
                                                    env=environment, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, text=True)))
    for _, process in processes:
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 0, output[-4000:]
    summary = json.loads((tmp_path / "model" / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 3 and summary["global_batch_size"] == 8
    assert summary["eval_images"] == 8
    chief, worker = ([arrays[f"arr_{i}"] for i in range(len(arrays.files))]
                     for arrays in (np.load(weights) for weights, _ in processes))
    assert len(chief) == len(worker) > 0
    for first, second in zip(chief, worker):
        np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)
