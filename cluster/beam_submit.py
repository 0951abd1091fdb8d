"""Command lines that submit the extraction pipeline to Dataflow or to Beam on Flink.

`distillery-extract` takes its own flags, then `--`, then Beam pipeline options, passed through
untouched. These functions put the options that matter for each runner after the `--`, followed by
any options the user added, so the user's word is last:

  - Dataflow: project, region, temp_location, worker machine type, initial and maximum workers,
    the SDK container (our Docker image, `--sdk_location=container`) or a setup file, and GPUs for
    the teacher (`--dataflow_service_options=worker_accelerator=type:T;count:N;install-nvidia-driver`,
    one SDK process per VM so that processes do not fight over the GPU memory), Runner v2.
  - Flink: PortableRunner against the Beam job server (k8s/base/beam-job-server.yaml), SDK
    harness EXTERNAL at localhost:50000, the worker pool sidecar of each TaskManager.

    distillery-submit dataflow --project=my-project --region=us-central1 \
      --temp_location=gs://my-bucket/tmp --sdk_container_image=REGISTRY/distillery-sdk:0.1.0-gpu \
      --gpu_type=nvidia-tesla-t4 -- --source=tfds:imagenet2012:train \
      --teacher=builtin:mobilenet_v2_imagenet --output=gs://my-bucket/soft/train \
      --dead_letter=gs://my-bucket/soft/dead.jsonl
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from distillery.cli import option

EXTRACT_COMMAND = "distillery-extract"
WORKER_POOL_ADDRESS = "localhost:50000"


class SubmitError(ValueError):
    """Submission settings that cannot work; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class DataflowSettings:
    """What a Dataflow extraction job needs beyond the extraction flags; each field is a flag of
    `distillery-submit dataflow`."""

    project: str | None = option(None, help="Google Cloud project (dataflow).")
    region: str | None = option(None, help="Dataflow region, e.g. us-central1.")
    temp_location: str | None = option(None, help="gs:// folder for Dataflow's temporary files.")
    machine_type: str = option("n1-standard-8", help="Worker machine type (N1 for T4 GPUs).")
    num_workers: int = option(1, help="Initial number of Dataflow workers.")
    max_num_workers: int = option(100, help="Autoscaling ceiling.")
    sdk_container_image: str | None = option(None, help="The Distillery image, beam-sdk target.")
    setup_file: str | None = option(None, help="setup.py to stage instead of a container image.")
    gpu_type: str | None = option(None, help="GPU for the teacher, e.g. nvidia-tesla-t4 (none: CPU).")
    gpu_count: int = option(1, help="GPUs per worker with --gpu_type.")
    job_name: str | None = option(None, help="Dataflow job name.")
    service_account_email: str | None = option(None, help="Worker service account.")


@dataclasses.dataclass(frozen=True)
class FlinkSettings:
    """Where the Beam job server listens (a port-forward by default, or its Service inside the cluster);
    each field but environment_config is a flag of `distillery-submit flink`."""

    job_endpoint: str = option("localhost:8099", help="Beam job server (kubectl port-forward "
                               "svc/distillery-beam-job-server 8099 8098), or distillery-beam-job-server:8099 "
                               "inside the cluster.")
    artifact_endpoint: str | None = option("localhost:8098", help="Beam artifact service.")
    parallelism: int | None = option(None, help="Flink parallelism (default: the session's).")
    environment_config: str = WORKER_POOL_ADDRESS


def split_extract_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits '[extract flags] [-- user beam options]' into its two parts.

    Raises:
        SubmitError: no extraction flags at all.
    """
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        extract_flags, user_options = argv[:cut], argv[cut + 1:]
    else:
        extract_flags, user_options = argv, []
    if not extract_flags:
        raise SubmitError("give the distillery-extract flags after `--` (e.g. -- --source=... --output=...)")
    return extract_flags, user_options


def dataflow_options(settings: DataflowSettings) -> list[str]:
    """The Beam options of a Dataflow run, in a stable order.

    Raises:
        SubmitError: missing project/region, a temp_location that is not gs://, no container
            image and no setup file, or worker counts that contradict each other.
    """
    if not settings.project or not settings.region:
        raise SubmitError("--project and --region are required for Dataflow")
    if not (settings.temp_location or "").startswith("gs://"):
        raise SubmitError(f"--temp_location={settings.temp_location}: Dataflow needs a gs:// path")
    if not settings.sdk_container_image and not settings.setup_file:
        raise SubmitError("give --sdk_container_image (the Distillery image) or --setup_file "
                          "(setup.py, staged and installed on each worker)")
    if settings.num_workers < 1 or settings.max_num_workers < settings.num_workers:
        raise SubmitError(f"--num_workers={settings.num_workers} --max_num_workers="
                          f"{settings.max_num_workers}: need 1 <= num_workers <= max_num_workers")
    options = [
        "--runner=DataflowRunner",
        f"--project={settings.project}",
        f"--region={settings.region}",
        f"--temp_location={settings.temp_location}",
        f"--machine_type={settings.machine_type}",
        f"--num_workers={settings.num_workers}",
        f"--max_num_workers={settings.max_num_workers}",
        "--experiments=use_runner_v2",
    ]
    if settings.sdk_container_image:
        options += [f"--sdk_container_image={settings.sdk_container_image}", "--sdk_location=container"]
    else:
        options.append(f"--setup_file={settings.setup_file}")
    if settings.gpu_type:
        if settings.gpu_count < 1:
            raise SubmitError(f"--gpu_count={settings.gpu_count}: need at least 1 with --gpu_type")
        options += [
            "--dataflow_service_options=worker_accelerator="
            f"type:{settings.gpu_type};count:{settings.gpu_count};install-nvidia-driver",
            # One SDK process per VM: several would each load the teacher into the same GPU.
            "--experiments=no_use_multiple_sdk_containers",
        ]
    if settings.job_name:
        options.append(f"--job_name={settings.job_name}")
    if settings.service_account_email:
        options.append(f"--service_account_email={settings.service_account_email}")
    return options


def flink_options(settings: FlinkSettings) -> list[str]:
    """The Beam options of a PortableRunner run on the Flink session (k8s/base).

    Raises:
        SubmitError: a job endpoint without a port.
    """
    if ":" not in settings.job_endpoint:
        raise SubmitError(f"--job_endpoint={settings.job_endpoint}: expected HOST:PORT")
    options = [
        "--runner=PortableRunner",
        f"--job_endpoint={settings.job_endpoint}",
        "--environment_type=EXTERNAL",
        f"--environment_config={settings.environment_config}",
    ]
    if settings.artifact_endpoint:
        options.append(f"--artifact_endpoint={settings.artifact_endpoint}")
    if settings.parallelism:
        options.append(f"--parallelism={settings.parallelism}")
    return options


def extract_command(extract_flags: Sequence[str], runner_options: Sequence[str],
                    user_options: Sequence[str] = ()) -> list[str]:
    """distillery-extract FLAGS -- RUNNER_OPTIONS USER_OPTIONS (user options untouched, last)."""
    return [EXTRACT_COMMAND, *extract_flags, "--", *runner_options, *user_options]
