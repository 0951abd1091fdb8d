"""The settings of `distillery-pipeline`: each field is one of its flags (distillery/cli.py).

`config`, `runlocal` and `image` shape the compiled pipeline (its steps and the image they run in); the
other fields are the pipeline's run-time parameters, whose values here are the defaults written into the
YAML (a run may override them: KFP's `arguments`, Vertex AI's `parameter_values`).

    python -c "from pipelines_kfp import pipeline_config; help(pipeline_config.PipelineConfig)"
"""

from __future__ import annotations

import dataclasses

import configs
from distillery.cli import option

DEFAULT_IMAGE = "REGISTRY/distillery:0.1.0-cpu"  # the Dockerfile's default target, VARIANT=cpu (docs/cluster.md)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # demo/data.py's default: the Debian package's
TRAININGS = ("local", "jobset", "tfjob")
# The fields that are run-time parameters of the pipeline (the others shape it when it is compiled).
RUN_PARAMETERS = ("beam_options", "max_int8_drop", "latency_budget_ms", "training", "namespace", "overlay",
                  "train_image", "train_timeout_s")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How to build, compile and run the pipeline."""

    config: str = option("imagenet_openimages", choices=configs.RECIPES, help="The recipe (configs/NAME.py) whose "
                         "parts, students and job settings the pipeline runs.")
    runlocal: bool = option(False, help="The recipe shrunk for a laptop (get_config(runlocal=True)); with "
                                        "--config=demo: the tiny demo chain.")
    output: str = option("pipeline.yaml", help="compile: the pipeline's IR YAML (for Kubeflow Pipelines or Vertex AI "
                                               "Pipelines).")
    output_dir: str | None = option(None, help="run --local: the pipeline root: each run's artifacts in a folder of "
                                               "its own, and the cache of finished steps (.kfp_cache).")
    local: bool = option(False, help="run: on this machine with kfp.local (each step a subprocess of this Python, "
                                     "offline). Runs on a cluster are submitted from the compiled YAML (docs/cluster.md).")
    image: str = option(DEFAULT_IMAGE, help="The Distillery image every step runs in.")
    idx_dir: str = option(FASHION_MNIST_DIR, help="--config=demo: the Fashion-MNIST idx files its data step splits.")
    beam_options: str = option("", help="Beam options of the extractions, as one string: empty runs each on Beam's "
                                        "FnApiRunner inside its step; --runner=DataflowRunner ... or "
                                        "--runner=PortableRunner ... as distillery-submit prints them.")
    max_int8_drop: float = option(1.0, help="The gate: the most top-1 points the blessed int8 model may lose to the "
                                            "float32 model it was compressed from.")
    latency_budget_ms: float = option(30.0, help="The gate: the blessed model's median single-thread latency must be "
                                                 "within this (default: LPIRC's 30 ms per image).")
    training: str = option("local", choices=TRAININGS, help="Where students train: local = inside their step; "
                                                            "jobset / tfjob = that object of k8s/, created through the "
                                                            "Kubernetes API (needs a gs:// pipeline root).")
    namespace: str = option("distillery", help="The namespace of the training JobSet / TFJob.")
    overlay: str = option("", help="The k8s/ overlay the training object comes from (small, large; default: small "
                                   "for --runlocal, else large).")
    train_image: str = option("", help="The image of the training pods (default: the overlay's GPU image).")
    train_timeout_s: int = option(172800, lower_bound=1, help="Seconds a cluster training may take before its step "
                                                             "deletes it and fails.")
