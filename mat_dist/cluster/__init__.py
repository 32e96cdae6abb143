"""Where Ray work runs: cluster files, and the one place that connects to Ray.

    from mat_dist.cluster import load_cluster, connect
    cluster = load_cluster("clusters/multi-gpu.yaml")   # or None: the embedded default (clusters/local.yaml)
    with connect(cluster) as runtime: ...               # ray initialised (started or attached), resources checked

- ``files``: the cluster-file schema (``ClusterConfig``), the shipped files, ``load_cluster``;
- ``runtime``: ``connect`` (every ``ray.init`` of mat-dist) and the checks that fail fast before
  anything slow starts (address probe, resources, storage).

Training on a cluster is ``mat_dist.training``'s, the evaluator's shards ``mat_dist.evaluate``'s and
the sweep ``mat_dist.tune``'s; all three connect here. Nothing here imports Ray at import time.
"""

from mat_dist.cluster.files import IN_PROCESS, ClusterConfig, LocalConfig, cluster_from_dict, load_cluster

__all__ = ["IN_PROCESS", "ClusterConfig", "LocalConfig", "cluster_from_dict", "connect", "load_cluster"]


def __getattr__(name: str):
    # connect pulls in Ray lazily: ``import mat_dist.cluster`` stays cheap.
    if name == "connect":
        from mat_dist.cluster.runtime import connect

        return connect
    raise AttributeError(name)
