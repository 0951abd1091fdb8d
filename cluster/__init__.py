"""Running Distillery on a cluster: Kubernetes manifests, Dataflow and Flink submission (README.md, "Running on a cluster")."""
