"""The driver of ``matd tune``: a Ray Tune sweep over a search space, with ASHA, MLflow and the best config.

    run_sweep(load_space("mnist5k-cpu"), SweepSettings(output=Path("runs/tune-mnist5k-cpu")))
    run_sweep(None, SweepSettings(output=Path("runs/tune-mnist5k-cpu"), resume=True, fidelity=3, confirm=2))

``run_sweep`` is six named steps, each failing fast with one line before the next, slower one:

- ``prepare``: space x base config (every candidate value validated) -> cluster file -> the sweep folder
  (``sweep.json``; ``--resume`` reads it back); then Ray is connected, the trials sized and their concurrency
  set from the cluster's resources, and the MLflow parent run created before any trial starts;
- ``fit_trials``: ``Tuner.fit()`` (or ``Tuner.restore(..., resume_errored=True).fit()``; the searcher, random or
  TPE, is restored with it);
- ``tabulate``: the table of all trials, the plot of the objective against each searched value, the Pareto
  front of robustness against training cost, and the best trial's config (the best eligible: complete,
  within ``objective.max_cost``), written to the sweep folder and logged to the parent run;
- ``measure_fidelity``: with ``fidelity``, the top trials and a few random ones re-trained at the full budget
  and the proxy's rank correlation (``mat_dist.tune.fidelity``);
- ``confirm_best``: with ``confirm``, the best config and the base config trained with N seeds at the full
  budget and evaluated with a suite on the test images (``mat_dist.tune.confirm``);
- ``report_sweep``: ``report.md`` (``mat_dist.tune.sweep_report``).

The trial plumbing (a trial's shape, the trial function, Ray's run settings, the saved statuses) is
``mat_dist.tune.trials``, which the fidelity step shares.

Sweep folder:
    sweep.json              the space, the base config (with the space's overrides), the cluster,
                            the parent MLflow run id: what --resume continues
    ray/sweep/              Ray Tune's experiment (trial checkpoints, experiment state)
    trials/<trial id>/      config.yaml, metrics.jsonl, starts.jsonl of each trial
    trial_runs.json         trial id -> MLflow run id
    trials.csv              one row per trial (status, epochs, stopped early, objective, cost, searched values)
    objective_vs_params.png the final objective of each trial against each searched value
    pareto.csv, pareto.png  the Pareto front of val/robust_all against cost/passes (mat_dist.tune.pareto)
    best_config.yaml        the best trial's config, for ``matd train --config`` as it is
    summary.json            the best trial, counts, wall time
    fidelity/, fidelity.*   the fidelity step (mat_dist.tune.fidelity)
    confirm/, confirm.json  the confirmation on the test images (mat_dist.tune.confirm)
    report.md               all of it in one page
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mat_dist.core.run_config import RunConfig, apply_run_overrides, config_to_dict, config_to_yaml, load_config
from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.atomic import read_jsonl, write_atomic
from mat_dist.tune.objective import (CLEAN, COST_PASSES, COST_SECONDS, FEASIBLE, OBJECTIVE, ROBUST_ALL, STARTS_FILE,
                                     trial_folder)
from mat_dist.tune.pareto import PARETO_PLOT, PARETO_TABLE, within_cost, write_pareto
from mat_dist.tune.space import Dist, Scheduler, SearchSpace, space_from_dict, space_to_dict, trial_config
from mat_dist.tune.trials import (TrialShape, max_concurrent, ray_run_config, trainable, trial_shape,
                                  trial_statuses, unfinished)

SWEEP_FILE = "sweep.json"
EXPERIMENT = "sweep"            # Ray Tune experiment name: fixed, so --resume finds it
TABLE_FILE = "trials.csv"
PLOT_FILE = "objective_vs_params.png"
BEST_FILE = "best_config.yaml"
SUMMARY_FILE = "summary.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """What one call of ``run_sweep`` asks for, besides the space.

    ``cluster``: a ClusterConfig, a cluster file or shipped name, or None (the embedded default: a local
    runtime, one 1-CPU worker per trial). ``trials`` replaces the space's count. ``callbacks``: extra Ray
    Tune callbacks. ``fidelity``: re-train the top ``fidelity`` trials (and the space's ``fidelity.random``
    more) at the full budget; None: the space's ``fidelity.top`` (0: no fidelity step). ``confirm``: train
    the best config and the base config with that many seeds at the full budget and evaluate them with
    ``confirm_suite`` (a suite name, file or plain data) on ``confirm_examples`` test images (None: the
    suite's count). ``echo``: progress lines of those two steps. ``time_budget_s`` replaces the space's
    wall-clock budget for the trials (a new sweep only).
    """

    output: Path
    base: str | RunConfig | None = None     # None: the space's base:
    overrides: Sequence[str] = ()           # key=value overrides of the base config
    cluster: Any = None
    trials: int | None = None
    resume: bool = False                    # continue the sweep in ``output``
    tracking_uri: str | None = None
    callbacks: Sequence[Any] = ()
    verbose: int = 0                        # Ray Tune's verbosity
    fidelity: int | None = None
    confirm: int = 0
    confirm_suite: str | Mapping[str, Any] = "field"
    confirm_examples: int | None = None
    echo: Callable[[str], None] | None = None
    time_budget_s: float | None = None      # seconds of wall clock for the trials

    def say(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)


@dataclass(frozen=True)
class SweepPlan:
    """What ``prepare`` settled before Ray starts; the steps after it read it."""

    output: Path                    # absolute
    space: SearchSpace              # on --resume, the space the sweep started with
    saved: dict[str, Any]           # sweep.json as data; the steps add parent_run_id and budget_spent to it
    base_raw: dict                  # the proxy base every trial trains: the base config with the space's overrides
    base_cfg: RunConfig             # the same, typed (its tracking settings are the parent run's)
    cluster: Any                    # the ClusterConfig the trials run on
    shape: TrialShape
    trials: int                     # Tune's num_samples
    top: int                        # trials the fidelity step re-trains (0: no fidelity step)
    full_raw: dict | None           # the full-budget base of the fidelity step and --confirm


@dataclass(frozen=True)
class Tabulated:
    """What ``tabulate`` read back and wrote: the trials' rows, their ranking, the best and the front."""

    rows: list[dict[str, Any]]      # one per trial, as in trials.csv
    ranked: list[dict[str, Any]]    # the trials with an objective, best first
    best: dict[str, Any] | None
    best_config: Path | None        # written only when no trial is left unfinished
    front: list[dict[str, Any]]
    interrupted: bool               # trials left unfinished (a spent wall-clock budget is not an interruption)


@dataclass(frozen=True)
class SweepResult:
    output: Path
    rows: list[dict[str, Any]]          # one per trial, as in trials.csv
    best: dict[str, Any] | None         # the best row
    best_config: Path | None
    interrupted: bool                   # trials (or fidelity re-runs) left unfinished: continue with --resume
    wall_s: float
    parent_run_id: str | None
    front: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the Pareto front, cheapest first
    fidelity: Any = None                # a FidelityResult when the fidelity step ran
    confirm: Any = None                 # a ConfirmResult when --confirm ran
    report: Path | None = None

    @property
    def stopped_early(self) -> int:
        return sum(1 for r in self.rows if r["stopped_early"])


# ---------------------------------------------------------------- the driver

def run_sweep(space: SearchSpace | None, settings: SweepSettings) -> SweepResult:
    """Run (or with ``settings.resume`` continue) the sweep of ``space`` into ``settings.output``."""
    from mat_dist.cluster.runtime import connect

    started = time.perf_counter()
    # Tune warns whenever trials checkpoint every epoch (each epoch is a checkpoint here, on purpose).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    plan = prepare(space, settings)
    with connect(plan.cluster) as runtime:
        concurrency = max_concurrent(plan.shape, runtime.resources, plan.space.max_concurrent,
                                     source=plan.cluster.source)
        parent = _open_parent(plan, settings.tracking_uri)
        spent = fit_trials(plan, settings, concurrency=concurrency, parent=parent)
        table = tabulate(plan, spent=spent, started=started)
        fid = measure_fidelity(plan, settings, table, concurrency=concurrency, parent=parent)
        interrupted = fid.interrupted if fid is not None else table.interrupted
        _log_tabulated(parent, plan.output, table, fid)
    conf = confirm_best(plan, settings, table.best, parent=parent) if not interrupted else None
    report = report_sweep(plan, table, interrupted=interrupted, wall_s=time.perf_counter() - started)
    _close_parent(parent, plan.output, report, interrupted=interrupted)
    return SweepResult(output=plan.output, rows=table.rows, best=table.best, best_config=table.best_config,
                       interrupted=interrupted, wall_s=time.perf_counter() - started,
                       parent_run_id=plan.saved.get("parent_run_id"), front=table.front, fidelity=fid,
                       confirm=conf, report=report)


# ---------------------------------------------------------------- prepare

def prepare(space: SearchSpace | None, settings: SweepSettings) -> SweepPlan:
    """Check the settings and start the sweep folder, or read it back on --resume; nothing runs yet."""
    output = Path(settings.output).expanduser().resolve()
    saved = _load_saved(output) if settings.resume else None
    if settings.time_budget_s is not None:
        if settings.time_budget_s <= 0:
            raise UserError(f"--time-budget {settings.time_budget_s:g}: give a positive number of seconds")
        if space is not None:
            space = dataclasses.replace(space, time_budget_s=float(settings.time_budget_s))
    if settings.confirm < 0 or (settings.fidelity is not None and settings.fidelity < 0):
        raise UserError(f"--confirm {settings.confirm} / --fidelity {settings.fidelity}: give 0 or more")
    if saved is not None:
        space, cluster, trials = _resumed(space, settings, saved, output)
    else:
        space, cluster, trials, saved = _started(space, settings, output)
    fidelity = settings.fidelity
    if fidelity is None and settings.resume:
        from mat_dist.tune.fidelity import planned_top

        fidelity = planned_top(output)  # a plain --resume finishes a begun fidelity step
    top = space.fidelity.top if fidelity is None else fidelity
    return SweepPlan(output=output, space=space, saved=saved, base_raw=saved["base"],
                     base_cfg=trial_config(saved["base"], {}), cluster=cluster, shape=trial_shape(cluster),
                     trials=trials, top=top,
                     full_raw=full_budget(space, saved) if top or settings.confirm else None)


def _resumed(space: SearchSpace | None, settings: SweepSettings, saved: dict[str, Any],
             output: Path) -> tuple[SearchSpace, Any, int]:
    """--resume: the space, cluster and trial count the sweep in ``output`` started with (a cluster or a
    trial count given now replaces the saved one)."""
    from mat_dist.cluster.files import cluster_from_dict, load_cluster

    saved_space = space_from_dict(saved["space"], source=saved["space_source"])
    if space is not None and space_to_dict(space) != saved["space"]:
        raise UserError(f"--resume: {space.source} differs from the space the sweep in {output} started with; "
                        f"resume without --space, or start a new sweep in another --output")
    cluster = settings.cluster
    if cluster is None:
        cluster = cluster_from_dict(saved["cluster"], source=saved["cluster_source"])
    elif isinstance(cluster, str):
        cluster = load_cluster(cluster)
    trials = settings.trials if settings.trials is not None else saved["trials"]
    _check_pbt_trials(saved_space, cluster)
    return saved_space, cluster, trials


def _started(space: SearchSpace | None, settings: SweepSettings,
             output: Path) -> tuple[SearchSpace, Any, int, dict[str, Any]]:
    """A new sweep: space x base config checked, the cluster loaded, then ``output/sweep.json`` written."""
    from mat_dist.cluster.files import IN_PROCESS, ClusterConfig, cluster_to_dict, load_cluster

    if space is None:
        raise UserError("give --space FILE (a search space; see tune_spaces/)")
    if (output / SWEEP_FILE).is_file():
        raise UserError(f"{output} already holds a sweep; pass --resume to continue it or choose another --output")
    if settings.cluster == IN_PROCESS:
        raise UserError("matd tune runs its trials on Ray; --cluster none is for matd train only")
    cluster = settings.cluster if isinstance(settings.cluster, ClusterConfig) else load_cluster(settings.cluster)
    base_cfg = base_config(space, settings.base)
    base_raw = _absolute_data_root(space.base_raw(base_cfg, list(settings.overrides)))
    space.check_against(base_raw)
    trials = settings.trials if settings.trials is not None else space.trials
    if trials < 1:
        raise UserError(f"--trials {trials}: give at least 1")
    _check_pbt_trials(space, cluster)
    output.mkdir(parents=True, exist_ok=True)
    saved = {"space": space_to_dict(space), "space_source": space.source, "base": base_raw,
             # the base before the space's overrides: the full budget of the fidelity step and --confirm
             "budget_base": _absolute_data_root(apply_run_overrides(config_to_dict(base_cfg), list(settings.overrides))),
             "cluster": cluster_to_dict(cluster), "cluster_source": cluster.source,
             "trials": trials, "parent_run_id": None}
    _save(output, saved)
    return space, cluster, trials, saved


# ---------------------------------------------------------------- sweep folder

def _save(output: Path, saved: dict[str, Any]) -> None:
    write_atomic(output / SWEEP_FILE, json.dumps(saved, indent=1))


def _load_saved(output: Path) -> dict[str, Any]:
    path = output / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"--resume: {output} holds no sweep (no {SWEEP_FILE}); start one without --resume")
    return json.loads(path.read_text())


def base_config(space: SearchSpace, base: str | RunConfig | None) -> RunConfig:
    if isinstance(base, RunConfig):
        return base
    name = base or space.base
    if name is None:
        raise UserError(f"{space.source} names no base config (base:); pass --config FILE or a shipped name")
    return load_config(name)


def _absolute_data_root(raw: dict) -> dict:
    """Trials run in a Ray session folder: the data folder must be absolute."""
    root = raw.get("data", {}).get("root")
    if root:
        raw["data"]["root"] = str(Path(root).expanduser().resolve())
    return raw


def _max_epochs(space: SearchSpace, base_raw: dict) -> int:
    """ASHA's max_t: the base's epochs, or the largest searched value of train.epochs."""
    for p in space.params:
        if p.key == "train.epochs":
            return int(max(p.candidates()))
    return int(base_raw["train"]["epochs"])


def _check_pbt_trials(space: SearchSpace, cluster: Any) -> None:
    if space.scheduler.name is Scheduler.PBT:
        from mat_dist.tune.pbt import check_shape

        check_shape(trial_shape(cluster).kind, cluster.source)


def full_budget(space: SearchSpace, saved: dict) -> dict:
    """The full-budget base of the fidelity step and --confirm: the sweep's base with the budget keys the
    space's overrides shorten put back at the base config's values, then the space's ``fidelity.full``."""
    from mat_dist.tune.fidelity import full_budget_base

    if "budget_base" not in saved:
        raise UserError("this sweep was started before mat-dist recorded the base config's own budget; "
                        "start a new sweep for --fidelity or --confirm")
    return full_budget_base(saved["base"], saved["budget_base"], overrides=space.overrides,
                            full=space.fidelity.full, source=space.source)


# ---------------------------------------------------------------- the parent run

def _open_parent(plan: SweepPlan, tracking_uri: str | None):
    """The sweep's MLflow run, created (or reopened on --resume) in the driver before any trial starts; a new
    one's id goes into sweep.json."""
    cfg, saved, space = plan.base_cfg, plan.saved, plan.space
    if not cfg.tracking.enabled:
        return None
    from mat_dist.plumbing.tracking import Tracker, git_commit

    tracker = Tracker.start(uri=tracking_uri or cfg.tracking.uri, experiment=cfg.tracking.experiment,
                            run_name=f"tune-{Path(space.source).stem}", run_id=saved.get("parent_run_id"),
                            tags={"mat_dist.output": str(plan.output), "mat_dist.kind": "tune-sweep"})
    if saved.get("parent_run_id") is None:
        tracker.log_params({"space": saved["space"], "base": saved["base"], "trials": saved["trials"]})
        tracker.set_tags({"mat_dist.git_commit": git_commit(Path(__file__).parent) or "unknown",
                          "mat_dist.space": space.source})
        saved["parent_run_id"] = tracker.run_id
        _save(plan.output, saved)
    return tracker


def _log_tabulated(parent: Any, output: Path, table: Tabulated, fid: Any) -> None:
    """The sweep folder's files and the best trial's figures (and the fidelity step's) on the parent run."""
    if parent is None:
        return
    for name in (TABLE_FILE, PLOT_FILE, BEST_FILE, SUMMARY_FILE, SWEEP_FILE, PARETO_TABLE, PARETO_PLOT):
        if (output / name).is_file():
            parent.log_artifact(output / name)
    best, rows = table.best, table.rows
    if best is not None:
        parent.log_metrics({"best/objective": best[OBJECTIVE], "best/clean_acc": best[CLEAN],
                            "best/cost_passes": best[COST_PASSES],
                            "trials": len(rows), "stopped_early": sum(r["stopped_early"] for r in rows)}, step=0)
    if fid is not None:
        from mat_dist.tune.fidelity import FIDELITY_PLOT, FIDELITY_SUMMARY, FIDELITY_TABLE

        for name in (FIDELITY_TABLE, FIDELITY_SUMMARY, FIDELITY_PLOT):
            parent.log_artifact(output / name)
        if not math.isnan(fid.spearman):
            parent.log_metrics({"fidelity/spearman": fid.spearman}, step=0)


def _close_parent(parent: Any, output: Path, report: Path, *, interrupted: bool) -> None:
    if parent is None:
        return
    from mat_dist.tune.confirm import CONFIRM_FILE

    for path in (report, output / CONFIRM_FILE):
        if path.is_file():
            parent.log_artifact(path)
    if not interrupted:
        parent.end("FINISHED")  # an interrupted sweep's parent stays RUNNING until --resume ends it


# ---------------------------------------------------------------- fit_trials

def fit_trials(plan: SweepPlan, settings: SweepSettings, *, concurrency: int, parent: Any) -> bool:
    """Run (or continue) the sweep's trials; returns whether the wall-clock budget is spent.

    At space.time_budget_s Tune stops: the trials it cut or never started are the budget's, not a crash's.
    A spent budget is recorded, so that a later --resume (say, for --fidelity) runs no more trials.
    """
    if plan.saved.get("budget_spent"):
        return True
    tuner = _tuner(plan, concurrency=concurrency, parent=parent, callbacks=list(settings.callbacks),
                   verbose=settings.verbose, resume=settings.resume)
    log.info("sweep %s: %d trial(s) at once, %s", plan.output, concurrency, plan.shape)
    fit_started = time.perf_counter()
    tuner.fit()
    budget = plan.space.time_budget_s
    spent = budget is not None and time.perf_counter() - fit_started >= 0.98 * budget
    if spent:
        plan.saved["budget_spent"] = True
        _save(plan.output, plan.saved)
    return spent


def _tuner(plan: SweepPlan, *, concurrency: int, parent: Any, callbacks: list, verbose: int, resume: bool):
    from ray import tune

    from mat_dist.tune.searchers import search_alg

    space, base_raw, output = plan.space, plan.base_raw, plan.output
    fn = trainable(space, base_raw, plan.cluster, plan.shape, sweep_dir=output)
    path = output / "ray" / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), fn, resume_errored=True)  # the searcher's state comes back with it
    scheduler = _scheduler(space, base_raw)
    if parent is not None:
        from mat_dist.tune.trial_tracking import TrialTracking

        callbacks = [TrialTracking(uri=parent.tracking_uri, experiment=base_raw["tracking"]["experiment"],
                                   parent_run_id=parent.run_id, sweep_dir=str(output), base_raw=base_raw,
                                   run_prefix=f"tune-{Path(space.source).stem}"), *callbacks]
    searcher, param_space = search_alg(space, concurrency=concurrency)
    return tune.Tuner(
        fn, param_space=param_space,
        tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max", scheduler=scheduler, num_samples=plan.trials,
                                    search_alg=searcher, time_budget_s=space.time_budget_s),
        run_config=ray_run_config(EXPERIMENT, output / "ray", plan.cluster, plan.shape, callbacks=callbacks,
                                  verbose=verbose, keep=3 if space.scheduler.name is Scheduler.PBT else 1),
    )


def _scheduler(space: SearchSpace, base_raw: dict):
    """The space's trial scheduler: PBT, ASHA (its max_t the largest epoch count a trial trains) or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if space.scheduler.name is Scheduler.PBT:
        from mat_dist.tune.pbt import pbt_scheduler

        return pbt_scheduler(space)
    if space.scheduler.name is Scheduler.ASHA:
        epochs = _max_epochs(space, base_raw)
        return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(space.scheduler.grace_period, epochs),
                             reduction_factor=space.scheduler.reduction_factor)
    return FIFOScheduler()


# ---------------------------------------------------------------- tabulate

def tabulate(plan: SweepPlan, *, spent: bool, started: float) -> Tabulated:
    """The trials read back from their folders: trials.csv, the objective plot, the Pareto front, summary.json,
    and the best trial's config once no trial is left unfinished."""
    space, output = plan.space, plan.output
    statuses = trial_statuses(output / "ray" / EXPERIMENT)
    total = plan.trials * math.prod(len(p.values) for p in space.params if p.dist is Dist.GRID)
    interrupted = not spent and unfinished(statuses, total)
    rows = trial_rows(output, space, statuses, max_epochs=_max_epochs(space, plan.base_raw))
    best = best_row(rows, space.objective.max_cost)
    best_path = export_best(output, plan.base_raw, best, space) if best is not None and not interrupted else None
    front = _write_outputs(output, space, rows, best, wall_s=time.perf_counter() - started, interrupted=interrupted)
    return Tabulated(rows=rows, ranked=ranked_trials(rows, space.objective.max_cost), best=best, best_config=best_path,
                     front=front, interrupted=interrupted)


# ---------------------------------------------------------------- fidelity, confirm, report

def measure_fidelity(plan: SweepPlan, settings: SweepSettings, table: Tabulated, *, concurrency: int,
                     parent: Any):
    """The fidelity step (a FidelityResult), or None when it is off or the sweep's trials are unfinished."""
    if not plan.top or table.interrupted:
        return None
    from mat_dist.tune.fidelity import run_fidelity

    settings.say(f"fidelity: re-training the top {plan.top} trial(s) and {plan.space.fidelity.random} random "
                 f"one(s) at the full budget")
    return run_fidelity(output=plan.output, space=plan.space, ranked=table.ranked, full_raw=plan.full_raw,
                        top=plan.top, extra=plan.space.fidelity.random, cluster=plan.cluster, shape=plan.shape,
                        concurrency=concurrency, parent=parent, verbose=settings.verbose)


def confirm_best(plan: SweepPlan, settings: SweepSettings, best: dict[str, Any] | None, *, parent: Any):
    """--confirm: the best config and the base config on the test images (a ConfirmResult), or None."""
    if not settings.confirm or best is None:
        return None
    from mat_dist.tune.confirm import run_confirm

    cluster = settings.cluster
    return run_confirm(output=plan.output, space=plan.space, best=best, full_raw=plan.full_raw,
                       seeds=settings.confirm, suite=settings.confirm_suite, examples=settings.confirm_examples,
                       cluster=cluster if isinstance(cluster, str) else None,
                       tracking_uri=settings.tracking_uri or (parent.tracking_uri if parent is not None else None),
                       log=settings.say)


def report_sweep(plan: SweepPlan, table: Tabulated, *, interrupted: bool, wall_s: float) -> Path:
    """report.md from what the steps left in the sweep folder."""
    from mat_dist.tune.sweep_report import write_sweep_report

    return write_sweep_report(plan.output, space=plan.space, base_raw=plan.base_raw, rows=table.rows,
                              best=table.best, front=table.front, max_cost=plan.space.objective.max_cost,
                              interrupted=interrupted, wall_s=wall_s)


# ---------------------------------------------------------------- table, plot, best

def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def trial_rows(output: Path, space: SearchSpace, statuses: dict[str, str], *, max_epochs: int) -> list[dict]:
    """One row per trial from its folder: searched values, status, epochs, early stop, final and best objective."""
    from mat_dist.core.run_config import read_yaml
    from mat_dist.tune.space import get_key

    rows = []
    for tid in sorted(statuses):
        folder = trial_folder(output, tid)
        history = read_jsonl(folder / "metrics.jsonl")
        raw = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
        starts = len((folder / STARTS_FILE).read_text().splitlines()) if (folder / STARTS_FILE).is_file() else 0
        last = history[-1] if history else {}
        epochs_run = int(last.get("epoch", 0))
        status = statuses[tid]
        target = int(get_key(raw, "train.epochs") or max_epochs) if raw else max_epochs
        row = {"trial_id": tid, "status": status, "epochs": epochs_run, "starts": starts,
               "stopped_early": status == "TERMINATED" and 0 < epochs_run < target,
               OBJECTIVE: float(last.get(OBJECTIVE, float("nan"))),
               "best_objective": max((float(r[OBJECTIVE]) for r in history if OBJECTIVE in r), default=float("nan")),
               CLEAN: float(last.get(CLEAN, float("nan"))), ROBUST_ALL: float(last.get(ROBUST_ALL, float("nan"))),
               FEASIBLE: float(last.get(FEASIBLE, float("nan"))),
               COST_PASSES: float(last.get(COST_PASSES, float("nan"))),
               COST_SECONDS: float(last.get(COST_SECONDS, float("nan")))}
        for k, v in last.items():
            if k.startswith("val/robust_") and k != ROBUST_ALL:
                row[k] = float(v)
        for key in space.keys:
            row[f"param/{key}"] = get_key(raw, key) if raw else None
        rows.append(row)
    return rows


def ranked_trials(rows: list[dict[str, Any]], max_cost: float | None = None) -> list[dict[str, Any]]:
    """The trials with an objective, best first: those within ``max_cost`` before those over it, then those that
    ran all their epochs before those stopped early or cut, then by final objective and clean accuracy."""
    scored = [r for r in rows if not math.isnan(r[OBJECTIVE]) and r["status"] != "ERROR"]
    return sorted(scored, key=lambda r: (within_cost(r, max_cost),
                                         not r["stopped_early"] and r["status"] == "TERMINATED",
                                         r[OBJECTIVE], r[CLEAN]), reverse=True)


def best_row(rows: list[dict[str, Any]], max_cost: float | None = None) -> dict[str, Any] | None:
    """The best trial: highest final objective among trials that ran all their epochs, else among all with one;
    a trial over ``max_cost`` (training passes) is never the best."""
    order = ranked_trials(rows, max_cost)
    return order[0] if order and within_cost(order[0], max_cost) else None


def export_best(output: Path, base_raw: dict, best: dict[str, Any], space: SearchSpace) -> Path:
    """Write the best trial's config as a YAML ``matd train --config`` accepts as it is."""
    from mat_dist.core.run_config import config_from_dict, read_yaml

    cfg = config_from_dict(read_yaml(trial_folder(output, best["trial_id"]) / "config.yaml"))
    cfg = dataclasses.replace(cfg, name=f"{base_raw['name']}-tuned")
    searched = ", ".join(f"{k}={_value_text(best[f'param/{k}'])}" for k in space.keys)
    eps = ", ".join(f"{n.value} {e:g}" for n, e in cfg.eval.eps.items())
    path = output / BEST_FILE
    header = (f"# Best trial {best['trial_id']} of the sweep in {output} (space {space.source}): validation union "
              f"robust accuracy {100 * best[OBJECTIVE]:.1f}% at eval radii ({eps}), clean {100 * best[CLEAN]:.1f}%, "
              f"training cost {best[COST_PASSES]:.4g} forward + backward passes.\n"
              f"# Run: matd train --config {path}\n#\n# Searched: {searched}\n")
    write_atomic(path, header + config_to_yaml(cfg))
    return path


def _write_outputs(output: Path, space: SearchSpace, rows: list[dict], best: dict | None, *, wall_s: float,
                   interrupted: bool) -> list[dict]:
    """trials.csv, the objective plot, the Pareto front (CSV and PNG) and summary.json; returns the front."""
    front: list[dict] = []
    if rows:
        buf = io.StringIO()
        columns = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _value_text(v) if isinstance(v, list) else v for k, v in r.items()})
        write_atomic(output / TABLE_FILE, buf.getvalue())
        plot_objective(rows, space, output / PLOT_FILE)
        front = write_pareto(output, rows, keys=space.keys, max_cost=space.objective.max_cost,
                             title=f"{Path(space.source).name}: robustness against training cost")
    summary = {"trials": len(rows), "stopped_early": sum(r["stopped_early"] for r in rows),
               "errored": sum(r["status"] == "ERROR" for r in rows), "interrupted": interrupted,
               "wall_s": wall_s, "best": best, "searcher": space.searcher.name.value,
               "max_cost": space.objective.max_cost,
               "over_max_cost": sum(not within_cost(r, space.objective.max_cost) for r in rows),
               "pareto_front": [r["trial_id"] for r in front]}
    write_atomic(output / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))
    return front


def plot_objective(rows: list[dict], space: SearchSpace, path: Path) -> None:
    """One panel per searched key: final objective of each trial against its value (lists as categories)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = space.keys
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    styles = {"complete": ("tab:blue", "o"), "stopped early": ("tab:orange", "v"), "other": ("tab:gray", "x")}
    for ax, key in zip(axes[0], keys):
        values = [r[f"param/{key}"] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({_value_text(v) for v in values}) if not numeric else []
        for label, (color, marker) in styles.items():
            pick = [r for r in rows if _style(r) == label and not math.isnan(r[OBJECTIVE])]
            xs = [r[f"param/{key}"] if numeric else labels.index(_value_text(r[f"param/{key}"])) for r in pick]
            ax.scatter(xs, [100 * r[OBJECTIVE] for r in pick], c=color, marker=marker, label=label)
        if numeric and any(p.key == key and p.dist is Dist.LOGUNIFORM for p in space.params):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel("objective: val union robust acc (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{Path(space.source).name}: final objective per trial", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _style(row: dict) -> str:
    if row["status"] == "TERMINATED":
        return "stopped early" if row["stopped_early"] else "complete"
    return "other"
