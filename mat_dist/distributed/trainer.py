"""The one TorchTrainer of mat-dist: a cluster file's workers running ``train_worker``.

Both ``matd train --cluster`` (``job.train_ray``) and Tune trials that are
multi-worker Train jobs (``tune.objective.ray_train_trial``) build their
trainer here, so the scaling, failure, checkpoint and logging settings of a
cluster file mean the same thing in both.

Ray Train V2 reads the worker-group start timeout from the environment of the
process that calls ``fit()`` (and propagates it to its controller actor): a
Tune trial is such a process, so ``fit`` sets it there too, not only in the
driver of ``matd train``.
"""

from __future__ import annotations

from typing import Any, Sequence

from mat_dist.cluster.files import ClusterConfig
from mat_dist.distributed.worker import train_worker
from mat_dist.environ import scoped_env

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def torch_trainer(cluster: ClusterConfig, *, loop_config: dict[str, Any], run_name: str, storage: str,
                  callbacks: Sequence[Any] = ()):
    """A ``TorchTrainer`` of ``cluster.workers`` ranks (elastic when ``workers.min`` is set), gloo or nccl."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    w, f = cluster.workers, cluster.failure
    return TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=(min(cluster.worker_counts), w.num) if cluster.elastic else w.num,
            use_gpu=cluster.use_gpu,
            resources_per_worker={"CPU": w.cpus, **({"GPU": w.gpus} if w.gpus else {})},
            placement_strategy=w.placement.value),
        run_config=RunConfig(
            name=run_name, storage_path=storage,
            failure_config=FailureConfig(max_failures=f.max_failures,
                                         controller_failure_limit=f.controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=cluster.storage.checkpoints_kept),
            worker_runtime_env={"env_vars": dict(cluster.env)} if cluster.env else None,
            callbacks=list(callbacks) or None,
            # WARNING: Ray Train's INFO lines repeat every report's whole metrics dict; rank 0 prints its own.
            logging_config=LoggingConfig(log_level="WARNING")),
    )


def fit(trainer, cluster: ClusterConfig):
    """``trainer.fit()`` with the cluster file's worker-group start timeout (seconds) in force."""
    with scoped_env(**{START_TIMEOUT_ENV: str(cluster.failure.worker_start_timeout_s)}):
        return trainer.fit()
