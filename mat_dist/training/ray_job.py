"""The driver of a training run on Ray: one Ray Train TorchTrainer job of the cluster file's workers.

    train_ray(cfg, Path("runs/x"), load_cluster("clusters/local.yaml"))   # or mat_dist.training.train(...)

Order, each step failing fast with one line before the next, slower one:
cluster/config checks (batch divisible by every worker count, device) ->
storage probe-write -> connect to Ray and check its CPUs/GPUs -> the run
folder (config.yaml; ``--resume`` checks) -> the MLflow run, created here in
the driver before any worker logs -> ``TorchTrainer.fit()`` -> the final
model, metrics.jsonl and report.md copied from the last checkpoint into the
run folder, so ``mat_dist.load_model(output)`` works as after a local run.

The run folder (``run_folder``) gets ``ray_run.json`` besides: the Ray run
name and storage path. The name is made once and then kept, so ``fit()`` of a
resumed run (``--resume``) finds Ray's checkpoint snapshot at
``<storage>/<name>/`` and every worker restarts from the latest checkpoint.

``torch_trainer`` is the one TorchTrainer of mat-dist: ``train_ray`` and the
Tune trials that are multi-worker Train jobs (``tune.objective.ray_train_trial``)
both build theirs here, so the scaling, failure, checkpoint and logging
settings of a cluster file mean the same thing in both. Ray Train V2 reads the
worker-group start timeout from the environment of the process that calls
``fit()`` (and propagates it to its controller actor): a Tune trial is such a
process, so ``fit`` sets it there too, not only in the driver of ``matd train``.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from mat_dist.plumbing.atomic import read_jsonl, write_atomic
from mat_dist.core.checkpoint import copy_checkpoint, save_final_model
from mat_dist.cluster.files import ClusterConfig, is_uri
from mat_dist.cluster.runtime import check_reachable, check_storage, connect
from mat_dist.core.run_config import RunConfig
from mat_dist.plumbing.console import plural
from mat_dist.data import load_splits
from mat_dist.core.mimo_batches import MimoBatches
from mat_dist.core.init_from import check_init_source
from mat_dist.core.trainer import model_spec
from mat_dist.plumbing.environ import scoped_env
from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.tracking import check_store
from mat_dist.training.ray_worker import WorkerArgs, train_worker
from mat_dist.training.recorder import log_missing_epochs, start_tracker
from mat_dist.core.run_folder import METRICS_FILE, RAY_RUN_FILE, RunFolder, RunResult

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


@dataclass(frozen=True)
class RayRunResult(RunResult):
    ray_run_name: str = ""
    storage: str = ""
    worker_summary: dict[str, Any] | None = None  # rank 0's return value (world size, resumed_from, ...)
    wall_s: float = 0.0                           # driver's wall time, Ray start-up included


def check_job(cfg: RunConfig, cluster: ClusterConfig) -> None:
    """Config x cluster mistakes that need no cluster to find."""
    batch = cfg.data.batch_size
    bad = [n for n in cluster.worker_counts if batch % n]
    if bad:
        raise UserError(f"data.batch_size={batch} does not divide across {bad[0]} workers "
                        f"({cluster.source}); choose a global batch that is a multiple of "
                        + ("every worker count in workers.min..workers.num" if cluster.elastic else f"{bad[0]}"))
    device = cfg.train.device
    if device.startswith("cuda") and not cluster.use_gpu:
        raise UserError(f"train.device={device} but {cluster.source} gives workers no GPU (workers.gpus: 0); "
                        f"set workers.gpus or train.device=auto")
    if device == "cpu" and cluster.use_gpu:
        raise UserError(f"train.device=cpu but {cluster.source} reserves GPUs for each worker; "
                        f"set train.device=auto or workers.gpus: 0")
    if cluster.is_local:
        check_data_on_cluster(cfg, cluster)


def check_data_on_cluster(cfg: RunConfig, cluster: ClusterConfig) -> None:
    """Load the data and cut one epoch's batches in the driver, as the workers will.

    On a local runtime the driver sees the workers' files, so a missing or
    corrupt data folder, or a data set smaller than one global batch, is one
    clear line here instead of a traceback from every retried worker.
    """
    splits = load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
                         limit_train=cfg.data.limit_train)
    for world_size in cluster.worker_counts:
        MimoBatches(splits.train, num_members=cfg.model.num_members, batch_size=cfg.data.batch_size,
                    seed=cfg.seed, rank=0, world_size=world_size)
    check_init_source(cfg.train.init_from, model_spec(cfg, splits))  # the workers read the same file


def _ray_run(output: Path, storage: str, cfg: RunConfig, resume: bool) -> dict[str, str]:
    """The run's Ray name and storage: made for a new run, read back (and checked) on --resume."""
    run = RunFolder(output)
    record = run.ray_run
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved["storage"] != storage:
            raise UserError(f"--resume: the run's checkpoints are in {saved['storage']} but the cluster file puts "
                            f"storage at {storage}; set storage.path to {saved['storage']}")
        return saved
    if resume and run.checkpoints.is_dir():
        raise UserError(f"--resume: {output} was trained in-process (no {RAY_RUN_FILE}); "
                        f"resume it with --cluster none")
    saved = {"name": f"{cfg.name}-{uuid.uuid4().hex[:8]}", "storage": storage}
    write_atomic(record, json.dumps(saved))
    return saved


def torch_trainer(cluster: ClusterConfig, *, args: WorkerArgs, run_name: str, storage: str,
                  callbacks: Sequence[Any] = ()):
    """A ``TorchTrainer`` of ``cluster.workers`` ranks (elastic when ``workers.min`` is set), gloo or nccl,
    each running ``train_worker(args)``."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    w, f = cluster.workers, cluster.failure
    return TorchTrainer(
        train_worker,
        train_loop_config=asdict(args),  # plain data through Ray; the worker makes it a WorkerArgs again
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


def _failure(err: BaseException, cluster: ClusterConfig, output: Path) -> BaseException:
    """The exception to raise for a run that failed for good: UserError for what a user can fix."""
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(err, WorkerGroupError):
        for cause in err.worker_failures.values():
            if isinstance(cause, UserError):
                return UserError(str(cause).splitlines()[-1].split("UserError: ")[-1])
        return err  # a bug in training: keep Ray's message and traceback
    if isinstance(err, ControllerError):
        cause = str(err.controller_failure).splitlines()[0]
        f = cluster.failure
        if "timed out" in cause or "startup" in cause.lower():
            return UserError(
                f"training stopped: the cluster could not (re)start {plural(cluster.workers.num, 'worker')} "
                f"({f.controller_failure_limit + 1} tries of {f.worker_start_timeout_s:g} s each; a node was lost "
                f"or resources are short); add nodes, or lower workers.num or set workers.min, then "
                f"matd train --output {output} --resume --cluster {cluster.source}")
        return UserError(f"training stopped by a Ray Train controller error ({cause}); "
                         f"fix it and matd train --output {output} --resume")
    return err


def _finish(cfg: RunConfig, output: Path, checkpoint: Any, keep: int) -> list[dict[str, Any]]:
    """Copy the final checkpoint's model, metrics and state into the run folder; write report.md."""
    if checkpoint is None:
        raise UserError(f"the Ray run finished without a checkpoint; nothing to copy to {output}")
    run = RunFolder(output)
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        rows = read_jsonl(folder / METRICS_FILE)  # the history rank 0 put into its last checkpoint
        save_final_model(folder, run.model)  # the best epoch's weights with eval.select=best
        run.write_metrics(rows)
        copy_checkpoint(folder, run.checkpoints, epoch=int(rows[-1]["epoch"]) if rows else 0, keep=keep)
    run.write_report(cfg, rows)
    return rows


def train_ray(cfg: RunConfig, output: Path, cluster: ClusterConfig, *, resume: bool = False,
              tracking_uri: str | None = None) -> RayRunResult:
    """Train ``cfg`` as a Ray Train DDP job on ``cluster``; ``output`` ends up as after ``train_in_process``."""
    started = time.perf_counter()
    output = Path(output).expanduser().resolve()
    check_job(cfg, cluster)  # on a local runtime also the data (check_data_on_cluster), before config.yaml is written
    if cfg.tracking.enabled:  # an unreachable store fails here, before Ray starts or config.yaml is written
        check_store(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment)
    check_reachable(cluster)  # an unreachable address: one line before the storage folder is probed
    storage = cluster.storage_uri(output)
    check_storage(storage)
    with connect(cluster) as runtime:
        if len(runtime.node_resources) > 1 and not is_uri(storage):
            warnings.warn(f"storage {storage} is a local path: on a multi-node cluster it must be a shared "
                          f"folder (NFS) mounted at the same path on every node", RuntimeWarning, stacklevel=2)
        run = RunFolder(output)
        cfg = run.prepare(cfg, resume=resume)
        ray_run = _ray_run(output, storage, cfg, resume)
        tracker = start_tracker(cfg, run, tracking_uri)
        if tracker.tracking_uri and tracker.tracking_uri.startswith("sqlite:") and not cluster.is_local:
            warnings.warn(f"MLflow store {tracker.tracking_uri} is a local sqlite file; rank 0 may run on "
                          f"another node: pass --tracking-uri http://HEAD:5000 (mlflow server)",
                          RuntimeWarning, stacklevel=2)
        args = WorkerArgs.of(cfg, output, cluster, tracking_uri=tracker.tracking_uri, tracking_run_id=tracker.run_id)
        trainer = torch_trainer(cluster, args=args, run_name=ray_run["name"], storage=storage)
        with tracker:
            from ray.train import TrainingFailedError

            try:
                result = fit(trainer, cluster)
            except TrainingFailedError as err:
                failure = _failure(err, cluster, output)
                if failure is err:
                    raise
                raise failure from None
            rows = _finish(cfg, output, result.checkpoint, cfg.train.checkpoints_kept)
            log_missing_epochs(tracker, rows)  # an epoch rank 0 could not log (killed before its MLflow step)
            for path in (run.model, run.report, run.metrics):
                tracker.log_artifact(path)
    return RayRunResult(output=output, metrics=rows, tracking_run_id=tracker.run_id, ray_run_name=ray_run["name"],
                        storage=storage, worker_summary=result.return_value,
                        wall_s=time.perf_counter() - started)


__all__ = ["RayRunResult", "check_job", "fit", "torch_trainer", "train_ray"]
