"""Training runs: the one entry point, the run folder, the epoch recorder, and the in-process and Ray paths.

    from mat_dist.training import train
    train(cfg, Path("runs/x"))                                   # in this process (matd train --cluster none)
    train(cfg, Path("runs/x"), load_cluster("clusters/local.yaml"))  # a Ray Train DDP job on the cluster

- ``run_folder``: the layout of a run folder, metrics.jsonl and the resume rule;
- ``recorder``: ``EpochRecorder``, what every path records of an epoch (line, checkpoint, MLflow step);
- ``in_process``: the core loop in this process;
- ``ray_job``: the driver of a Ray Train job (checks, run folder, MLflow run, ``TorchTrainer``);
- ``ray_worker``: one DDP rank of that job (``WorkerArgs``, ``train_worker``).

The loop itself is ``mat_dist.core.trainer`` (``Trainer``), which knows nothing of Ray or MLflow.
Nothing here imports Ray at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from mat_dist.cluster.files import ClusterConfig
    from mat_dist.core.run_config import RunConfig
    from mat_dist.data import DataSplits
    from mat_dist.core.run_folder import RunResult

__all__ = ["train"]


def train(cfg: RunConfig, output: Path, cluster: ClusterConfig | None = None, *, resume: bool = False,
          tracking_uri: str | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_batch: Callable[[int, int], None] | None = None, splits: DataSplits | None = None) -> RunResult:
    """Train ``cfg`` into the run folder ``output``: in this process when ``cluster`` is None, else as a Ray
    Train job of ``cluster``'s workers. Either way ``output`` ends up with the same layout (``run_folder``).

    ``on_epoch(metrics)`` and ``on_batch(i, n)`` are called in this process, so only on the in-process path;
    on Ray, rank 0 prints a line per epoch to the driver's console instead. ``splits``: the data of an
    in-process run when the caller has read it already (``matd train`` reads it before its first line).
    """
    if cluster is None:
        from mat_dist.training.in_process import train_in_process

        return train_in_process(cfg, output, resume=resume, tracking_uri=tracking_uri, on_epoch=on_epoch,
                                on_batch=on_batch, splits=splits)
    from mat_dist.training.ray_job import train_ray

    return train_ray(cfg, output, cluster, resume=resume, tracking_uri=tracking_uri)
