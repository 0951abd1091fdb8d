"""`distillery-pipeline run --local`: the whole pipeline on this machine with kfp.local.

Each step runs as a subprocess of this Python (kfp.local.SubprocessRunner(use_venv=False): the installed
package, no containers, nothing downloaded); artifacts land under the pipeline root, one folder per run, and
finished steps are cached there (.kfp_cache), so a rerun with other gate thresholds reruns only the gate.

    distillery-pipeline run --local --config=demo --runlocal --output_dir=/tmp/kfp-tiny
"""

from __future__ import annotations

import glob
import json
import os
import warnings

from kfp import local

from pipelines_kfp import pipeline
from pipelines_kfp.pipeline_config import PipelineConfig


class RunFailed(RuntimeError):
    """A step failed; the message names it, with the gate's reasons when the gate refused the model."""


def last_verdict(output_dir: str, name: str) -> dict | None:
    """verdict.json of the newest run of pipeline `name` under `output_dir`, if its gate ran."""
    runs = sorted(glob.glob(os.path.join(output_dir, f"{name}-*")), key=os.path.getmtime)
    found = glob.glob(os.path.join(runs[-1], "gate", "blessed", "verdict.json")) if runs else []
    if not found:
        return None
    with open(found[0], encoding="utf-8") as handle:
        return json.load(handle)


def run_local(config: PipelineConfig) -> dict:
    """Runs the pipeline of `config` and returns the blessed Model's {uri, metadata}.

    Raises:
      RunFailed: a step failed (its log is above, on stdout); for the gate, with its reasons.
    """
    output_dir = os.path.abspath(config.output_dir)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=output_dir, enable_caching=True)
    chain = pipeline.build(config, one_thread=True)
    try:
        with warnings.catch_warnings():  # the image's name has no "python" in it: kfp.local warns once per step
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            task = chain(**pipeline.parameters(config))
    except RuntimeError as error:
        verdict = last_verdict(output_dir, pipeline.pipeline_name(config))
        if verdict is not None and not verdict["blessed"]:
            raise RunFailed(f"the gate refused {verdict['candidate']}: " + "; ".join(verdict["reasons"])) from error
        raise RunFailed(str(error)) from error
    blessed = task.outputs["Output"]
    return {"uri": blessed.uri, "metadata": dict(blessed.metadata)}
