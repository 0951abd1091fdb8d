"""Running Distillery on a cluster: Kubernetes manifests, Dataflow and Flink submission (docs/cluster.md)."""
