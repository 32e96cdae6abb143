"""The driver of ``matd train --cluster``: one training run as a Ray Train TorchTrainer job.

    train_ray(cfg, Path("runs/x"), load_cluster("clusters/local.yaml"))

Order, each step failing fast with one line before the next, slower one:
cluster/config checks (batch divisible by every worker count, device) ->
storage probe-write -> connect to Ray and check its CPUs/GPUs -> the run
folder (config.yaml; ``--resume`` checks) -> the MLflow run, created here in
the driver before any worker logs -> ``TorchTrainer.fit()`` -> the final
model, metrics.jsonl and report.md copied from the last checkpoint into the
run folder, so ``mat_dist.load_model(output)`` works as after a local run.

The run folder gets, beside what ``mat_dist.runner`` writes, ``ray_run.json``:
the Ray run name and storage path. The name is made once and then kept, so
``fit()`` of a resumed run (``--resume``) finds Ray's checkpoint snapshot at
``<storage>/<name>/`` and every worker restarts from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mat_dist.checkpoint import PREFIX, STATE, WEIGHTS, save_final_model
from mat_dist.config import RunConfig, config_to_dict
from mat_dist.console import plural
from mat_dist.data import MimoBatches, load_splits
from mat_dist.cluster.files import ClusterConfig, is_uri
from mat_dist.cluster.runtime import check_storage, connect
from mat_dist.distributed.trainer import fit, torch_trainer
from mat_dist.errors import UserError
from mat_dist.tracking import check_store
from mat_dist.runner import (
    METRICS_FILE,
    REPORT_FILE,
    RunResult,
    epoch_report,
    prepare_output,
    read_metrics,
    start_tracker,
    write_atomic,
)

RAY_RUN_FILE = "ray_run.json"


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
        check_data(cfg, cluster)


def check_data(cfg: RunConfig, cluster: ClusterConfig) -> None:
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


def _ray_run(output: Path, storage: str, cfg: RunConfig, resume: bool) -> dict[str, str]:
    """The run's Ray name and storage: made for a new run, read back (and checked) on --resume."""
    record = output / RAY_RUN_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved["storage"] != storage:
            raise UserError(f"--resume: the run's checkpoints are in {saved['storage']} but the cluster file puts "
                            f"storage at {storage}; set storage.path to {saved['storage']}")
        return saved
    if resume and (output / "checkpoints").is_dir():
        raise UserError(f"--resume: {output} was trained in-process (no {RAY_RUN_FILE}); "
                        f"resume it with --cluster none")
    saved = {"name": f"{cfg.name}-{uuid.uuid4().hex[:8]}", "storage": storage}
    write_atomic(record, json.dumps(saved))
    return saved


def _worker_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data, with data.root absolute (workers run in another directory)."""
    raw = config_to_dict(cfg)
    if raw["data"].get("root"):
        raw["data"]["root"] = str(Path(raw["data"]["root"]).expanduser().resolve())
    return raw


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
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        rows = read_metrics(folder / METRICS_FILE)
        save_final_model(folder, output / WEIGHTS)  # the best epoch's weights with eval.select=best
        write_atomic(output / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        epoch = int(rows[-1]["epoch"]) if rows else 0
        local = output / "checkpoints"
        local.mkdir(exist_ok=True)
        final = local / f"{PREFIX}{epoch:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=local))
        try:
            for name in (WEIGHTS, STATE):
                shutil.copyfile(folder / name, tmp / name)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in sorted(p for p in local.iterdir() if p.is_dir() and p.name.startswith(PREFIX))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    write_atomic(output / REPORT_FILE, epoch_report(cfg, rows))
    return rows


def train_ray(cfg: RunConfig, output: Path, cluster: ClusterConfig, *, resume: bool = False,
              tracking_uri: str | None = None) -> RayRunResult:
    """Train ``cfg`` as a Ray Train DDP job on ``cluster``; ``output`` ends up as after ``train_local``."""
    started = time.perf_counter()
    output = Path(output).expanduser().resolve()
    check_job(cfg, cluster)  # on a local runtime also the data (check_data), before config.yaml is written
    if cfg.tracking.enabled:  # an unreachable store fails here, before Ray starts or config.yaml is written
        check_store(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment)
    storage = cluster.storage_uri(output)
    check_storage(storage)
    with connect(cluster) as runtime:
        if len(runtime.node_resources) > 1 and not is_uri(storage):
            warnings.warn(f"storage {storage} is a local path: on a multi-node cluster it must be a shared "
                          f"folder (NFS) mounted at the same path on every node", RuntimeWarning, stacklevel=2)
        import ray.util

        cfg = prepare_output(cfg, output, resume=resume)
        ray_run = _ray_run(output, storage, cfg, resume)
        tracker = start_tracker(cfg, output, tracking_uri)
        if tracker.tracking_uri and tracker.tracking_uri.startswith("sqlite:") and not cluster.is_local:
            warnings.warn(f"MLflow store {tracker.tracking_uri} is a local sqlite file; rank 0 may run on "
                          f"another node: pass --tracking-uri http://HEAD:5000 (mlflow server)",
                          RuntimeWarning, stacklevel=2)
        args = {
            "config": _worker_config(cfg), "output": str(output), "threads": cluster.threads_per_worker,
            "use_gpu": cluster.use_gpu, "tracking_uri": tracker.tracking_uri, "tracking_run_id": tracker.run_id,
            "experiment": cfg.tracking.experiment, "run_name": cfg.name, "driver_ip": ray.util.get_node_ip_address(),
        }
        trainer = torch_trainer(cluster, loop_config=args, run_name=ray_run["name"], storage=storage)
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
            logged = tracker.logged_steps("epoch")
            for row in rows:
                if int(row["epoch"]) not in logged:
                    tracker.log_metrics(row, step=int(row["epoch"]))
            for name in (WEIGHTS, REPORT_FILE, METRICS_FILE):
                tracker.log_artifact(output / name)
    return RayRunResult(output=output, metrics=rows, tracking_run_id=tracker.run_id, ray_run_name=ray_run["name"],
                        storage=storage, worker_summary=result.return_value,
                        wall_s=time.perf_counter() - started)


__all__ = ["RAY_RUN_FILE", "RayRunResult", "check_job", "train_ray"]
