"""distillery-submit: Dataflow and Flink command lines, and render/apply from the command line."""

import pathlib
import subprocess
import sys

import pytest
import yaml

from cluster import beam_submit

EXTRACT_FLAGS = ["--source=tfds:imagenet2012:train", "--teacher=builtin:mobilenet_v2_imagenet",
                 "--output=gs://b/soft/train", "--dead_letter=gs://b/soft/dead.jsonl", "--views=4"]


def test_dataflow_command_line_has_the_options_that_matter():
    settings = beam_submit.DataflowSettings(
        project="my-project", region="us-central1", temp_location="gs://b/tmp", machine_type="n1-standard-16",
        num_workers=4, max_num_workers=64, sdk_container_image="REGISTRY/distillery-sdk:0.1.0-gpu",
        gpu_type="nvidia-tesla-t4", gpu_count=2, job_name="extract-imagenet")
    user_options = ["--save_main_session", "--experiments=shuffle_mode=service", "--labels=team=ml"]
    command = beam_submit.extract_command(EXTRACT_FLAGS, beam_submit.dataflow_options(settings), user_options)
    cut = command.index("--")
    assert command[:cut] == ["distillery-extract"] + EXTRACT_FLAGS
    assert command[cut + 1:] == [
        "--runner=DataflowRunner", "--project=my-project", "--region=us-central1", "--temp_location=gs://b/tmp",
        "--machine_type=n1-standard-16", "--num_workers=4", "--max_num_workers=64",
        "--experiments=use_runner_v2", "--sdk_container_image=REGISTRY/distillery-sdk:0.1.0-gpu",
        "--sdk_location=container",
        "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver",
        "--experiments=no_use_multiple_sdk_containers", "--job_name=extract-imagenet",
        # The user's own options come last, exactly as given.
        "--save_main_session", "--experiments=shuffle_mode=service", "--labels=team=ml"]


def test_dataflow_options_are_real_beam_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    settings = beam_submit.DataflowSettings(project="p", region="europe-west4", temp_location="gs://b/tmp",
                                            setup_file="./setup.py", num_workers=2, max_num_workers=8,
                                            gpu_type="nvidia-l4")
    options = PipelineOptions(beam_submit.dataflow_options(settings)).get_all_options()
    assert options["runner"] == "DataflowRunner" and options["project"] == "p"
    assert options["region"] == "europe-west4" and options["machine_type"] == "n1-standard-8"
    assert options["num_workers"] == 2 and options["max_num_workers"] == 8
    assert options["setup_file"] == "./setup.py" and options["sdk_container_image"] is None
    assert options["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert options["experiments"] == ["use_runner_v2", "no_use_multiple_sdk_containers"]


@pytest.mark.parametrize("change, message", [
    ({"temp_location": "/tmp/x"}, "gs:// path"),
    ({"sdk_container_image": None, "setup_file": None}, "--sdk_container_image"),
    ({"num_workers": 10, "max_num_workers": 5}, "num_workers <= max_num_workers"),
    ({"project": ""}, "--project and --region"),
    ({"gpu_type": "nvidia-tesla-t4", "gpu_count": 0}, "--gpu_count=0"),
])
def test_dataflow_settings_errors_name_the_flag(change, message):
    base = dict(project="p", region="r", temp_location="gs://b/t", sdk_container_image="img:1")
    with pytest.raises(beam_submit.SubmitError, match=message):
        beam_submit.dataflow_options(beam_submit.DataflowSettings(**{**base, **change}))


def test_flink_command_line_uses_the_job_server_and_the_worker_pool():
    options = beam_submit.flink_options(beam_submit.FlinkSettings(
        job_endpoint="localhost:8099", artifact_endpoint="localhost:8098", parallelism=16))
    assert options == ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL",
                       "--environment_config=localhost:50000", "--artifact_endpoint=localhost:8098",
                       "--parallelism=16"]
    with pytest.raises(beam_submit.SubmitError, match="HOST:PORT"):
        beam_submit.flink_options(beam_submit.FlinkSettings(job_endpoint="jobserver"))


def test_split_extract_argv():
    assert beam_submit.split_extract_argv(["--a=1", "--", "--b=2", "--", "x"]) == (["--a=1"], ["--b=2", "--", "x"])
    assert beam_submit.split_extract_argv(["--a=1"]) == (["--a=1"], [])
    with pytest.raises(beam_submit.SubmitError, match="after `--`"):
        beam_submit.split_extract_argv(["--", "--b=2"])


def _submit(*args):
    return subprocess.run([sys.executable, "-m", "cluster.submit", *args], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1],
                          timeout=120)


def test_command_line_render_apply_and_dataflow():
    result = _submit("render", "--overlay=large", "--job=train", "--set", "model_dir=gs://x/run1",
                     "--set", "workers=15")
    assert result.returncode == 0, result.stderr
    documents = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    assert {"ServiceAccount", "ConfigMap", "JobSet"} <= set(documents) and "TFJob" not in documents
    assert documents["ConfigMap"]["data"]["MODEL_DIR"] == "gs://x/run1"
    assert [job["replicas"] for job in documents["JobSet"]["spec"]["replicatedJobs"]] == [1, 15]
    result = _submit("render", "--overlay=small", "--job=train-tfjob", "--set", "workers=2")
    assert result.returncode == 0, result.stderr
    (tfjob,) = [d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "TFJob"]
    assert tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2 and tfjob["spec"]["runPolicy"]["suspend"] is False
    result = _submit("apply", "--overlay=small", "--job=benchmark")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# dry run: would pipe the following to `kubectl apply -f -`")
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert [kind for kind in kinds if kind in ("ServiceAccount", "ConfigMap", "Job")] == ["ServiceAccount", "ConfigMap", "Job"]
    result = _submit("dataflow", "--project=p", "--region=r", "--temp_location=gs://b/t", "--setup_file=./setup.py",
                     "--", *EXTRACT_FLAGS, "--", "--save_main_session")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["distillery-extract", *EXTRACT_FLAGS, "--", "--runner=DataflowRunner",
                                     "--project=p", "--region=r", "--temp_location=gs://b/t",
                                     "--machine_type=n1-standard-8", "--num_workers=1", "--max_num_workers=100",
                                     "--experiments=use_runner_v2", "--setup_file=./setup.py", "--save_main_session"]
    result = _submit("render", "--set", "bogus=1")
    assert result.returncode != 0 and "--set bogus: unknown parameter" in result.stderr
