"""The trial plumbing the sweep and its fidelity step share: a trial's shape and resources, how many fit at
once, the trial function Tune runs, Ray's run settings of an experiment, and the trials' saved statuses.

Nothing here imports Ray at import time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mat_dist.plumbing.errors import UserError
from mat_dist.tune.space import Scheduler, SearchSpace


@dataclass(frozen=True)
class TrialShape:
    kind: str                       # "process": the core loop in the trial; "ray_train": a DDP job per trial
    resources: dict[str, float]     # what Tune reserves for the trial function itself
    per_trial: dict[str, float]     # CPUs/GPUs one whole trial holds (its Train workers included)
    threads: int


def trial_shape(cluster: Any) -> TrialShape:
    """One worker: the trial is the core loop in its own process, holding that worker's CPUs/GPUs.
    More: the trial is a Ray Train job; its function only drives (0.01 CPU, as Ray documents)."""
    w = cluster.workers
    gpu = {"GPU": w.gpus} if w.gpus else {}
    if w.num == 1 and not cluster.elastic:
        res = {"CPU": w.cpus, **gpu}
        return TrialShape("process", res, res, cluster.threads_per_worker)
    per = {"CPU": w.num * w.cpus + 0.01, **({"GPU": w.num * w.gpus} if w.gpus else {})}
    return TrialShape("ray_train", {"CPU": 0.01}, per, cluster.threads_per_worker)


def max_concurrent(shape: TrialShape, total: dict[str, float], cap: int | None, *, source: str) -> int:
    """How many trials fit at once in the cluster's resources (and under the space's cap)."""
    fits = min(int(math.floor(total.get(k, 0.0) / v + 1e-9)) for k, v in shape.per_trial.items() if v > 0)
    if fits < 1:
        need = ", ".join(f"{v:g} {k}" for k, v in shape.per_trial.items())
        have = ", ".join(f"{total.get(k, 0.0):g} {k}" for k in shape.per_trial)
        raise UserError(f"one trial needs {need} but the cluster has {have} ({source}); "
                        f"lower workers.num / workers.cpus / workers.gpus")
    return min(fits, cap) if cap else fits


def trainable(space: SearchSpace, base_raw: dict, cluster: Any, shape: TrialShape, *, sweep_dir: Path,
              extra: dict[str, Any] | None = None):
    """The trial function with its spec and resources: the core loop in the trial, or a Ray Train job."""
    from ray import tune

    from mat_dist.cluster.files import cluster_to_dict
    from mat_dist.tune.objective import ray_train_trial, train_trial

    spec = {"base": base_raw, "sweep_dir": str(sweep_dir), "threads": shape.threads,
            "min_clean_acc": space.objective.min_clean_acc, "max_cost": space.objective.max_cost, **(extra or {})}
    if space.scheduler.name is Scheduler.PBT and "sources" not in spec:  # the sweep's own trials, not re-runs
        from mat_dist.tune.pbt import scheduled_lists

        spec["pbt_lists"] = scheduled_lists(space.keys)
    if shape.kind == "ray_train":
        spec.update(cluster=cluster_to_dict(cluster), cluster_source=cluster.source,
                    storage=str(cluster.storage_uri(sweep_dir / "train")))
        function = ray_train_trial
    else:
        function = train_trial
    return tune.with_resources(tune.with_parameters(function, spec=spec), shape.resources)


def ray_run_config(name: str, storage: Path, cluster: Any, shape: TrialShape, *, callbacks: list, verbose: int,
                   keep: int = 1):
    """Ray Tune's ``RunConfig`` of one experiment (not mat-dist's run config): where it stores its state, how
    often a failed trial restarts, how many checkpoints a trial keeps."""
    from ray import tune

    return tune.RunConfig(
        name=name, storage_path=str(storage), callbacks=callbacks or None, verbose=verbose,
        # the trial's own process restarts from its latest checkpoint; a Train job restarts itself
        failure_config=tune.FailureConfig(max_failures=cluster.failure.max_failures if shape.kind == "process" else 0),
        # PBT copies a top trial's latest checkpoint; Tune warns (and may lose the copy) at num_to_keep <= 2
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep))


def trial_statuses(experiment: Path) -> dict[str, str]:
    """trial id -> status (TERMINATED, ERROR, RUNNING, PENDING, PAUSED) as saved in the experiment state.

    Read back from disk, not from the ResultGrid: after an interruption Tune saves the state (running
    trials RUNNING, which ``Tuner.restore`` resumes) and only then stops the trials, which marks the
    in-memory ones TERMINATED as if they had finished.
    """
    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Failed to fetch metrics" for trials that never started
    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(str(experiment)).trials}
    finally:
        quiet.setLevel(level)


def unfinished(statuses: dict[str, str], expected: int) -> bool:
    """Whether trials are left to run: fewer saved than ``expected``, or one neither finished nor failed."""
    return len(statuses) < expected or any(s not in ("TERMINATED", "ERROR") for s in statuses.values())
