"""The pipeline's cluster training: the JobSet / TFJob it creates (from k8s/ via cluster/render.py, with the
chain's trainer arguments) and the create-and-wait logic, against a fake Kubernetes API in this process."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

import configs
from cluster import render
from configs import chain
from pipelines_kfp import kubernetes_job, training_job


class FakeCustomObjects:
    """CustomObjectsApi's create / get / delete of namespaced objects, with scripted status conditions: each
    `get` of an object returns the next status of `statuses` (the last one repeats)."""

    def __init__(self, statuses, existing=False, create_error=None):
        self.statuses, self.existing, self.create_error = list(statuses), existing, create_error
        self.objects, self.calls = {}, []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", group, version, namespace, plural, body["metadata"]["name"]))
        if self.create_error is not None:
            raise self.create_error
        if self.existing:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[(namespace, plural, body["metadata"]["name"])] = dict(body)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", plural, name))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"metadata": {"name": name}, "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        self.calls.append(("delete", plural, name, propagation_policy))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def conditions(*pairs):
    return {"conditions": [{"type": kind, "status": status, "reason": f"{kind}Reason", "message": f"{kind} message"}
                           for kind, status in pairs]}


JOBSET = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "distillery-hard-1"}}
TFJOB = {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "distillery-hard-1"}}


def wait(api, manifest, timeout_s=600.0):
    clock = FakeClock()
    lines = []
    result = kubernetes_job.apply_and_wait(api, manifest, "ml", timeout_s, poll_s=30, clock=clock, sleep=clock.sleep,
                                           log=lines.append)
    return result, lines, clock


def test_a_jobset_is_created_and_followed_until_it_completes():
    api = FakeCustomObjects([{}, conditions(("StartupPolicyCompleted", "True")), conditions(("Completed", "True"))])
    result, lines, clock = wait(api, JOBSET)
    assert api.calls[0] == ("create", "jobset.x-k8s.io", "v1alpha2", "ml", "jobsets", "distillery-hard-1")
    assert [call[0] for call in api.calls] == ["create", "get", "get", "get"]
    assert result["status"]["conditions"][0]["type"] == "Completed" and clock.now == 60
    assert lines == ["created JobSet ml/distillery-hard-1", "JobSet ml/distillery-hard-1: Completed"]


def test_a_tfjob_succeeds_on_its_own_condition_and_a_false_one_is_not_taken():
    api = FakeCustomObjects([conditions(("Running", "True"), ("Succeeded", "False")), conditions(("Succeeded", "True"))])
    wait(api, TFJOB)
    assert api.calls[0][1:5] == ("kubeflow.org", "v1", "ml", "tfjobs") and len(api.calls) == 3


def test_a_failed_object_fails_the_step_with_its_reason():
    api = FakeCustomObjects([conditions(("Failed", "True"))])
    with pytest.raises(kubernetes_job.JobFailed, match="JobSet ml/distillery-hard-1 failed: FailedReason: Failed message"):
        wait(api, JOBSET)
    assert not [call for call in api.calls if call[0] == "delete"]  # left for its logs


def test_a_timeout_deletes_the_object_and_says_so():
    api = FakeCustomObjects([{}])
    with pytest.raises(kubernetes_job.JobTimeout, match="did not finish within 90 s; deleted it"):
        wait(api, JOBSET, timeout_s=90)
    assert api.calls[-1] == ("delete", "jobsets", "distillery-hard-1", "Foreground")
    assert [call[0] for call in api.calls].count("get") == 4  # at 0, 30, 60 and 90 s


def test_a_retried_step_waits_for_the_object_it_created_before():
    api = FakeCustomObjects([conditions(("Completed", "True"))], existing=True)
    _, lines, _ = wait(api, JOBSET)
    assert "exists already" in lines[0]


def test_other_api_errors_and_kinds_are_not_hidden():
    with pytest.raises(ApiException, match="Forbidden"):
        wait(FakeCustomObjects([{}], create_error=ApiException(status=403, reason="Forbidden")), JOBSET)
    with pytest.raises(ValueError, match="only JobSet, TFJob"):
        wait(FakeCustomObjects([{}]), {"kind": "Job", "metadata": {"name": "x"}})


@pytest.mark.parametrize("training, kind", [("jobset", "JobSet"), ("tfjob", "TFJob")])
def test_the_training_object_is_the_overlays_with_the_chains_trainer_arguments(training, kind):
    recipe = configs.get_recipe("imagenet", runlocal=True)
    records = {"labelled": "gs://b/p/labelled.summary.json", "eval": "gs://b/p/eval.summary.json"}
    stage = chain.train_stage(recipe, "distilled", records, "gs://b/p/train/model")
    name = training_job.object_name("distilled", "gs://b/p/train/model")
    obj = training_job.training_object(training, name, "ml", chain.arguments(stage), image="r/d:9-gpu")
    assert obj["kind"] == kind and obj["metadata"]["name"] == name and obj["metadata"]["namespace"] == "ml"
    trainers = [container for container in render.iter_containers(obj) if container["command"] == ["distillery-train"]]
    assert len(trainers) == 2  # the chief and the workers
    for container in trainers:
        assert container["args"] == [*chain.arguments(stage), "--strategy=multi_worker"]
        assert container["image"] == "r/d:9-gpu"
        assert "--train=gs://b/p/labelled.summary.json" in container["args"]
        assert "--model_dir=gs://b/p/train/model" in container["args"]
    suspended = obj["spec"]["runPolicy"]["suspend"] if kind == "TFJob" else obj["spec"]["suspend"]
    assert suspended is False


def test_object_names_are_dns_labels_stable_per_output():
    name = training_job.object_name("distilled_unlabeled", "gs://b/run/model")
    assert name == training_job.object_name("distilled_unlabeled", "gs://b/run/model")
    assert name != training_job.object_name("distilled_unlabeled", "gs://b/run2/model")
    assert name.startswith("distillery-distilled-unlabeled-") and len(name) <= training_job.MAX_NAME
    assert all(character.isalnum() or character == "-" for character in name) and name == name.lower()
    with pytest.raises(ValueError, match="--training=local"):
        training_job.training_object("local", name, "ml", [])
