"""distillery-pipeline: the whole chain as one Kubeflow Pipelines v2 pipeline (pipelines_kfp/).

Actions:
  compile  write the pipeline's IR YAML (submit it to Kubeflow Pipelines or Vertex AI: docs/cluster.md);
  run      with --local, run it here with kfp.local, offline; prints the blessed model and its numbers.

    distillery-pipeline compile --config=imagenet_openimages --output=pipeline.yaml
    distillery-pipeline run --local --config=demo --runlocal --output_dir=/tmp/kfp-tiny --latency_budget_ms=5
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import app

from distillery import cli
from pipelines_kfp.pipeline_config import PipelineConfig

cli.define_flags(PipelineConfig)
_ACTIONS = ("compile", "run")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or argv[1] not in _ACTIONS:
        raise app.UsageError(f"one argument: {' or '.join(_ACTIONS)}")
    config = cli.from_flags(PipelineConfig)
    if argv[1] == "run" and not config.local:
        raise app.UsageError("run needs --local (kfp.local on this machine); on a cluster, submit the YAML of "
                             "`distillery-pipeline compile` (docs/cluster.md)")
    if argv[1] == "run" and not config.output_dir:
        raise app.UsageError("run --local needs --output_dir (the pipeline root)")
    from pipelines_kfp import local_run, pipeline  # pylint: disable=import-outside-toplevel  (TensorFlow, kfp)

    if argv[1] == "compile":
        print(f"wrote {pipeline.compile_pipeline(config, config.output)}")
        return
    try:
        blessed = local_run.run_local(config)
    except (local_run.RunFailed, pipeline.PipelineError) as error:
        sys.exit(f"distillery-pipeline: {error}")
    print(json.dumps({"blessed_uri": blessed["uri"], **blessed["metadata"]}, sort_keys=True))


def run_main() -> None:
    """Console script `distillery-pipeline`."""
    cli.run(main)


if __name__ == "__main__":
    run_main()
