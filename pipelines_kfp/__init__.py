"""The whole chain as one Kubeflow Pipelines v2 pipeline, from images to a blessed int8 model.

Steps (Python-function components in the Distillery image, each calling the project's library):
extract every part of the recipe -> train its students (a ParallelFor, each student then quantized to
int8) -> choose the best -> factorize it, and convert it to float32 -> quantize the factorized one ->
benchmark -> the gate, which blesses the int8 model or fails the run naming the reason. The stages and
their settings come from configs/chain.py, the same list demo/run.py runs.

    distillery-pipeline compile --config=imagenet_openimages --output=pipeline.yaml
    distillery-pipeline run --local --config=demo --runlocal --output_dir=/tmp/kfp-tiny

Layer: on top, beside benchmarks/ (it uses configs/, demo/ and cluster/); nothing imports it but its entry
point and the tests (docs/cluster.md, "One pipeline: Kubeflow Pipelines v2").
"""
