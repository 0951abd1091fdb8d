"""distillery-submit: run Distillery's jobs on a cluster (README.md, "Running on a cluster").

Actions:
  render    print one job's Kubernetes manifests (kustomize overlay + parameters) as YAML;
  apply     the same, piped to `kubectl apply -f -` (with --nodry_run; by default only printed);
  dataflow  the `distillery-extract` command line for Dataflow (run it with --nodry_run);
  flink     the `distillery-extract` command line for Beam on Flink through the job server.

    distillery-submit render --overlay=small --job=train --set model_dir=gs://my-bucket/runs/try1
    distillery-submit dataflow --project=my-project --region=us-central1 \
      --temp_location=gs://my-bucket/tmp --sdk_container_image=REGISTRY/distillery-sdk:0.1.0-gpu \
      --gpu_type=nvidia-tesla-t4 -- --source=tfds:imagenet2012:train \
      --teacher=builtin:mobilenet_v2_imagenet --output=gs://my-bucket/soft/train \
      --dead_letter=gs://my-bucket/soft/dead.jsonl
"""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

from absl import app, flags

from cluster import beam_submit, render
from distillery import cli

_ACTIONS = ("render", "apply", "dataflow", "flink")

_OVERLAY = flags.DEFINE_string("overlay", "small", "base, small, large, or a kustomization folder.")
_JOB = flags.DEFINE_enum("job", "all", ("all",) + render.JOBS, "Which job's objects to render.")
_SET = flags.DEFINE_multi_string("set", [], "NAME=VALUE parameters (cluster/render.py lists them).")
_K8S_DIR = flags.DEFINE_string("k8s_dir", str(render.K8S_DIR), "The k8s/ folder of a Distillery checkout.")
_DRY_RUN = flags.DEFINE_bool("dry_run", True, "Only print what would be applied or run.")
# dataflow and flink: the fields of their settings.
cli.define_flags(beam_submit.DataflowSettings)
cli.define_flags(beam_submit.FlinkSettings)


def _render_yaml() -> str:
    resources = render.render(_OVERLAY.value, _JOB.value, render.parse_assignments(_SET.value),
                              pathlib.Path(_K8S_DIR.value))
    return render.to_yaml(resources)


def _apply(manifests: str) -> None:
    command = ["kubectl", "apply", "-f", "-"]
    if _DRY_RUN.value:
        print(f"# dry run: would pipe the following to `{shlex.join(command)}` (--nodry_run to apply)")
        print(manifests, end="")
        return
    if shutil.which("kubectl") is None:
        raise app.UsageError("kubectl is not on PATH; use `distillery-submit render ... | kubectl apply -f -` "
                             "where it is")
    subprocess.run(command, input=manifests, text=True, check=True)


def _run_or_print(command: Sequence[str]) -> None:
    if _DRY_RUN.value:
        print(shlex.join(command))
        return
    sys.exit(subprocess.run(list(command), check=False).returncode)


def main(argv: Sequence[str]) -> None:
    if len(argv) < 2 or argv[1] not in _ACTIONS:
        raise app.UsageError(f"first argument: one of {', '.join(_ACTIONS)}")
    action, rest = argv[1], list(argv[2:])
    try:
        if action in ("render", "apply"):
            if rest:
                raise app.UsageError(f"unexpected arguments {rest}")
            manifests = _render_yaml()
            if action == "render":
                print(manifests, end="")
            else:
                _apply(manifests)
            return
        extract_flags, user_options = beam_submit.split_extract_argv(rest)
        if action == "dataflow":
            runner_options = beam_submit.dataflow_options(cli.from_flags(beam_submit.DataflowSettings))
        else:
            runner_options = beam_submit.flink_options(cli.from_flags(beam_submit.FlinkSettings))
        _run_or_print(beam_submit.extract_command(extract_flags, runner_options, user_options))
    except (render.RenderError, beam_submit.SubmitError) as error:
        raise app.UsageError(str(error)) from error


def run_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    run_main()
