"""Ray Train launch, cluster files, checkpoint and resume.

Public API (the evaluator and tune use the first two):

    from mat_dist.distributed import load_cluster, connect, train_ray
    cluster = load_cluster("clusters/multi-gpu.yaml")   # or None: the embedded default (clusters/local.yaml)
    with connect(cluster) as runtime: ...               # ray initialised (started or attached), resources checked
    train_ray(cfg, Path("runs/x"), cluster)             # one DDP training run as a Ray Train job

Nothing here imports Ray at import time.
"""

from mat_dist.distributed.cluster import IN_PROCESS, ClusterConfig, cluster_from_dict, load_cluster

__all__ = ["IN_PROCESS", "ClusterConfig", "cluster_from_dict", "connect", "load_cluster", "train_ray"]


def __getattr__(name: str):
    # connect and train_ray pull in Ray and torch lazily: ``import mat_dist.distributed`` stays cheap.
    if name == "connect":
        from mat_dist.distributed.launch import connect

        return connect
    if name == "train_ray":
        from mat_dist.distributed.job import train_ray

        return train_ray
    raise AttributeError(name)
