"""The TF_CONFIG a rendered TFJob gives each replica, and two real processes training from it.

The Kubeflow training operator's rule is reproduced in cluster/tf_config.py; here it is checked
against a hand-written TF_CONFIG, then the chief's and the worker's TF_CONFIGs (service names
swapped for 127.0.0.1 ports) drive two local `python -m trainer.train --strategy=multi_worker`
processes with the TFJob container's own arguments (the run shrunk by rendering it with a tiny
parameter set, not by adding flags), which must train as one 2-replica cluster.
"""

import json
import os
import pathlib
import subprocess
import sys

import cluster_fixtures
import pytest
from top1_check import independent_top1
from trainer_fixtures import free_ports

from cluster import job_arguments, render, tf_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train_tfjob(overlay="small", parameters=None):
    (tfjob,) = [r for r in render.render(overlay, "train-tfjob", parameters) if r["kind"] == "TFJob"]
    return tfjob


def test_tf_configs_match_the_operators_format():
    configs = tf_config.tf_configs(_train_tfjob("small"), namespace="ml")
    cluster = {
        "chief": ["distillery-train-chief-0.ml.svc:2222"],
        "worker": ["distillery-train-worker-0.ml.svc:2222"],
    }
    assert configs == [
        {"cluster": cluster, "task": {"type": "chief", "index": 0}, "environment": "cloud"},
        {"cluster": cluster, "task": {"type": "worker", "index": 0}, "environment": "cloud"},
    ]
    assert json.loads(tf_config.to_env(configs[1])) == configs[1]


def test_large_overlay_and_workers_parameter_change_the_cluster():
    large = tf_config.cluster_spec(_train_tfjob("large"))
    assert len(large["chief"]) == 1 and len(large["worker"]) == 7
    assert large["worker"][6] == "distillery-train-worker-6.default.svc:2222"
    three = tf_config.tf_configs(_train_tfjob("small", {"workers": "3"}))
    assert [c["task"] for c in three] == [{"type": "chief", "index": 0}] + [
        {"type": "worker", "index": i} for i in range(3)]


def test_port_comes_from_the_tfjob_port_and_evaluator_is_left_out():
    tfjob = _train_tfjob("small")
    tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 3333
    tfjob["spec"]["tfReplicaSpecs"]["Evaluator"] = tfjob["spec"]["tfReplicaSpecs"]["Chief"]
    spec = tf_config.cluster_spec(tfjob, "ns")
    assert spec == {"chief": ["distillery-train-chief-0.ns.svc:2222"],
                    "worker": ["distillery-train-worker-0.ns.svc:3333"]}


@pytest.mark.slow
def test_tfjob_tf_configs_drive_the_trainers_multi_worker_path(tmp_path):
    """`distillery-train --strategy=multi_worker` (python -m trainer.train) as the TFJob's chief and worker, with
    the container's own arguments: a tiny run comes from the rendered parameters, nothing is appended."""
    resources = render.render("small", "train-tfjob", cluster_fixtures.tiny_training(tmp_path))
    (tfjob,) = [r for r in resources if r["kind"] == "TFJob"]
    configs = tf_config.tf_configs(tfjob)
    addresses = configs[0]["cluster"]["chief"] + configs[0]["cluster"]["worker"]
    local = dict(zip(addresses, (f"127.0.0.1:{port}" for port in free_ports(len(addresses)))))
    model_dir = tmp_path / "model"
    container = tfjob["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    args = job_arguments.expanded_args(container, job_arguments.configmap_data(resources))
    assert "--strategy=multi_worker" in args and "--steps=3" in args and "--batch_size=8" in args
    assert not any("$(" in arg for arg in args), args
    processes = []
    for config in configs:
        environment = dict(os.environ, TF_CONFIG=tf_config.to_env(tf_config.localize(config, local)),
                           CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        processes.append(subprocess.Popen([sys.executable, "-m", "trainer.train", *args], env=environment,
                                          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for process in processes:
        output, _ = process.communicate(timeout=400)
        outputs.append(output)
        assert process.returncode == 0, output[-4000:]
    summary = json.loads((model_dir / "summary.json").read_text())
    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy.
    assert summary["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    assert summary["replicas"] == 2  # one CPU replica in each of the two processes
    assert summary["steps"] == 3 and summary["global_batch_size"] == 8
    # The two workers evaluated 4 records each and summed their counts: the saved student's own top-1.
    top1, labelled = independent_top1(str(model_dir / "student.keras"), str(tmp_path / "eval-*"))
    assert summary["top1"] == pytest.approx(top1) and summary["eval_images"] == labelled == 8
