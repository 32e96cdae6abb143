"""Ray Train: one training run as a DDP job (cluster files and connecting to Ray are ``mat_dist.cluster``'s).

    from mat_dist.distributed import train_ray
    train_ray(cfg, Path("runs/x"), cluster)             # one DDP training run as a Ray Train job

Nothing here imports Ray at import time.
"""

__all__ = ["train_ray"]


def __getattr__(name: str):
    # train_ray pulls in Ray and torch lazily: ``import mat_dist.distributed`` stays cheap.
    if name == "train_ray":
        from mat_dist.distributed.job import train_ray

        return train_ray
    raise AttributeError(name)
