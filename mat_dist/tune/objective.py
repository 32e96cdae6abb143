"""A Tune trial: one training run of the core loop, reporting the objective after every epoch.

The objective, honestly: ``val/robust_all`` of the deployed ensemble on the
validation split (held out of the training images, never the test images),
the per-example union over every norm's attack of the BASE config's per-epoch
check (``eval.attack``: APGD-CE + APGD-T in every config at the paper's radii,
where PGD overstates by tens of points) at the radii of its ``eval.eps``. ``trial_config`` keeps ``eval`` at the base's and the space
refuses to search it, so a trial that shrinks its training radii is still
attacked at the same evaluation radii: a smaller training radius cannot look
like progress. Clean accuracy is reported beside it; with ``min_clean_acc`` a
trial under it scores 0 and is reported ``feasible: 0``.

Two kinds of trial:
- ``train_trial``: the core ``Trainer`` in the trial's own process (the trial
  holds ``workers.cpus`` CPUs and ``workers.gpus`` GPUs of the cluster file);
  reports with ``ray.tune.report`` and checkpoints with ``ray.tune`` checkpoints;
- ``ray_train_trial``: the trial is a driver that runs a Ray Train TorchTrainer
  of ``workers.num`` ranks (``mat_dist.training.ray_worker``) with a
  ``TuneReportCallback`` that adds the objective.

Cost, the second objective: every epoch also reports ``cost/passes`` (forward
+ backward passes of the training network since epoch 0, paper Table 6's
count per batch times the batches trained: ``Trainer``'s ``train/passes``) and
``cost/seconds`` (the epochs' wall time so far). With ``max_cost`` a trial
whose passes exceed it scores 0 and is reported ``feasible: 0``, like one under
``min_clean_acc``.

A fidelity re-run (``mat_dist.tune.fidelity``) runs the same functions with
``spec["sources"]``: its Tune trial's config names a sweep trial
(``source_trial``), whose searched values it trains on the full-budget base,
in a folder named after that trial.

Each trial keeps a small folder ``<sweep>/trials/<trial id>/``: config.yaml,
metrics.jsonl (one line per epoch, each epoch once) and starts.jsonl (one line
per start of the trial function, with the epoch it resumed from), so a resumed
sweep can be checked for re-run work.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

OBJECTIVE = "objective"       # the metric Tune maximises
FEASIBLE = "feasible"         # 1.0 when clean accuracy meets min_clean_acc and cost max_cost (or no constraint)
ROBUST_ALL = "val/robust_all"
CLEAN = "val/clean_acc"
COST_PASSES = "cost/passes"   # forward + backward passes of the training network so far (paper Table 6 units)
COST_SECONDS = "cost/seconds"  # wall seconds of the epochs so far (training and the per-epoch check)
SOURCE = "source_trial"       # a fidelity re-run's config: the sweep trial whose values it re-trains
SCHEDULE = "schedule"         # a fidelity re-run's source values: the PBT trial's per-epoch schedule
TRIALS_DIR = "trials"
STARTS_FILE = "starts.jsonl"


def objective_metrics(metrics: dict[str, Any], min_clean_acc: float | None,
                      max_cost: float | None = None) -> dict[str, float]:
    """The objective of one epoch's metrics: union robust accuracy, 0 when clean accuracy is under the floor
    or the training cost (``cost/passes``, else ``train/passes``) is over ``max_cost``."""
    if ROBUST_ALL not in metrics or CLEAN not in metrics:
        raise KeyError(f"the epoch's metrics lack {ROBUST_ALL} / {CLEAN}: set data.val_size and eval.examples >= 1")
    robust, clean = float(metrics[ROBUST_ALL]), float(metrics[CLEAN])
    feasible = min_clean_acc is None or clean >= min_clean_acc
    if max_cost is not None:
        feasible = feasible and float(metrics.get(COST_PASSES, metrics.get("train/passes", 0.0))) <= max_cost
    return {OBJECTIVE: robust if feasible else 0.0, FEASIBLE: 1.0 if feasible else 0.0}


def cost_metrics(metrics: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, float]:
    """The trial's training cost up to this epoch: ``history`` holds the trial's earlier epochs' lines."""
    epoch = int(metrics["epoch"])
    seconds = sum(float(r.get("epoch_time_s", 0.0)) for r in history if int(r["epoch"]) < epoch)
    return {COST_PASSES: float(metrics.get("train/passes", 0.0)),
            COST_SECONDS: seconds + float(metrics.get("epoch_time_s", 0.0))}


def scored(metrics: dict[str, Any], folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """One epoch's line as the trial records and reports it: the metrics, the cost so far and the objective."""
    from mat_dist.plumbing.atomic import read_jsonl

    row = {**metrics, **cost_metrics(metrics, read_jsonl(folder / "metrics.jsonl"))}
    row.update(objective_metrics(row, spec.get("min_clean_acc"), spec.get("max_cost")))
    return row


def trial_folder(sweep_dir: str | os.PathLike, trial_id: str) -> Path:
    return Path(sweep_dir) / TRIALS_DIR / trial_id


def _append_line(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _prepare_trial(spec: dict[str, Any], params: dict[str, Any]):
    """Trial id, its folder and its config (base + sampled values, eval untouched)."""
    from ray import tune

    from mat_dist.core.run_config import config_to_yaml
    from mat_dist.plumbing.atomic import write_atomic
    from mat_dist.tune.space import trial_config

    trial_id = tune.get_context().get_trial_id()
    schedule = None
    if "sources" in spec:  # a fidelity re-run: the named sweep trial's values, in a folder named after it
        trial_id = params[SOURCE]
        params = dict(spec["sources"][trial_id])
        schedule = params.pop(SCHEDULE, None)  # a PBT trial's learned schedule, re-trained as it is
    folder = trial_folder(spec["sweep_dir"], trial_id)
    cfg = trial_config(spec["base"], params, name=f"{spec['base']['name']}-{trial_id}", schedule=schedule)
    write_atomic(folder / "config.yaml", config_to_yaml(cfg))
    return trial_id, folder, cfg


def _history_upto(folder: Path, epoch: int) -> list[dict[str, Any]]:
    """The trial's metrics lines up to ``epoch`` (lines past a restored checkpoint are dropped)."""
    from mat_dist.core.run_folder import RunFolder

    return RunFolder(folder).resume_metrics(epoch)


# ---------------------------------------------------------------- single-process trial

def train_trial(params: dict[str, Any], *, spec: dict[str, Any]) -> None:
    """Tune function: train the trial's config with the core ``Trainer`` in this process.

    ``spec`` (built by the sweep driver; paths absolute, as Tune chdirs):
    base (the base config as plain data), sweep_dir, threads, min_clean_acc, max_cost; sources for a
    fidelity re-run.
    """
    from ray import tune

    from mat_dist.core.checkpoint import check_same_model, load_checkpoint
    from mat_dist.data import load_splits
    from mat_dist.core.trainer import Trainer, resolve_device, set_threads
    from mat_dist.training.recorder import EpochRecorder

    # One INFO line per checkpoint ("Checkpoint successfully created") is noise at one checkpoint per epoch.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    checkpoint = tune.get_checkpoint()
    saved = None
    if checkpoint is not None:  # its own after a restart; another trial's after a PBT exploit
        with checkpoint.as_directory() as path:
            saved = load_checkpoint(Path(path))
    if "pbt_lists" in spec:  # a PBT trial: its config is its values and its lineage's schedule
        from mat_dist.tune.pbt import prepare_pbt_trial

        trial_id = tune.get_context().get_trial_id()
        folder = trial_folder(spec["sweep_dir"], trial_id)
        prepared = prepare_pbt_trial(spec, params, trial_id, folder, saved.state if saved else None)
        if prepared is None:
            return
        cfg, lineage = prepared
    else:
        trial_id, folder, cfg = _prepare_trial(spec, params)
        lineage = {}
    set_threads(spec["threads"])
    splits = load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
                         limit_train=cfg.data.limit_train)
    trainer = Trainer(cfg, splits, device=resolve_device(cfg.train.device))
    if saved is not None:
        check_same_model(saved, trainer.spec)
        trainer.load_state(saved.net, saved.state)
    trainer.lineage = lineage
    history = _history_upto(folder, trainer.progress.epoch)
    _append_line(folder / STARTS_FILE, {"from_epoch": trainer.progress.epoch, "pid": os.getpid(),
                                        "time": time.time()})

    def publish(row: dict[str, Any], ckpt: Path) -> None:  # report() copies ckpt into the sweep's storage
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))

    trainer.fit(EpochRecorder(history, metrics=folder / "metrics.jsonl", publish=publish,
                              score=lambda m: scored(m, folder, spec)))


# ---------------------------------------------------------------- multi-worker trial

def _objective_report_callback(spec: dict[str, Any], folder: Path):
    """A ``TuneReportCallback`` that adds the cost and the objective to rank 0's metrics before Tune sees them."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from mat_dist.plumbing.atomic import append_jsonl

    class ObjectiveReportCallback(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = scored(dict(metrics[0]), folder, spec)
            append_jsonl(folder / "metrics.jsonl", first)
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return ObjectiveReportCallback()


def ray_train_trial(params: dict[str, Any], *, spec: dict[str, Any]) -> None:
    """Tune function: the trial is a Ray Train job of ``workers.num`` DDP ranks (mat_dist.training.ray_worker).

    The Train run's name is ``train-<trial id>``, stable across a restored
    sweep, so Ray Train resumes the trial from its own latest checkpoint.
    ``spec`` adds to ``train_trial``'s: cluster (the cluster file as plain data), storage.
    """
    from mat_dist.cluster.files import cluster_from_dict
    from mat_dist.training.ray_job import fit, torch_trainer
    from mat_dist.training.ray_worker import WorkerArgs

    trial_id, folder, cfg = _prepare_trial(spec, params)
    cluster = cluster_from_dict(spec["cluster"], source=spec.get("cluster_source", "(sweep)"))
    # The Train run resumes itself; the metrics lines past its snapshot are re-reported and re-appended.
    resumed_from = _train_snapshot_epoch(spec["storage"], f"train-{trial_id}")
    _history_upto(folder, resumed_from)
    _append_line(folder / STARTS_FILE, {"from_epoch": resumed_from, "pid": os.getpid(), "time": time.time()})
    (folder / "train").mkdir(parents=True, exist_ok=True)
    # The worker writes its own metrics.jsonl (without the objective) into "output": keep it apart.
    # No MLflow run for the workers: the sweep's driver logs.
    args = WorkerArgs.of(cfg, folder / "train", cluster)
    trainer = torch_trainer(cluster, args=args, run_name=f"train-{trial_id}", storage=spec["storage"],
                            callbacks=[_objective_report_callback(spec, folder)])
    fit(trainer, cluster)


def _train_snapshot_epoch(storage: str, name: str) -> int:
    """The epoch of the latest checkpoint a previous attempt of this Train run left (0: none)."""
    snapshot = Path(storage) / name / "checkpoint_manager_snapshot.json"
    if not snapshot.is_file():
        return 0
    epochs = [int(p.name.split("-")[1]) for p in (Path(storage) / name).glob("epoch-*") if p.is_dir()
              and p.name.split("-")[1].isdigit()]
    return max(epochs, default=0)
