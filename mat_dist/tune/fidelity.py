"""Proxy fidelity: does the sweep's cheap proxy rank configs as their full training does?

A sweep scores every trial on a proxy: the space's overrides shorten training
(``train.epochs``, ``data.limit_train``) and ASHA stops most trials after a few
epochs. The fidelity step re-trains some trials at the full budget (the base
config's own epochs and training data, plus the space's ``fidelity.full``
overrides) and measures the Spearman rank correlation (scipy.stats.spearmanr)
between the proxy objective (the trial's last reported objective in the sweep)
and the full-budget objective (the same check, at the same eval radii, after
the full training). The trials re-trained: the ``top`` best of the sweep's
ranking (the best trial first) and ``random`` more drawn from the rest with
the space's seed, so the measure is not only about the top of the ranking.

    fidelity/plan.json        the trials picked and the full-budget base config: a re-run must match it
    fidelity/trials/<id>/     config.yaml, metrics.jsonl, starts.jsonl of each re-trained sweep trial
    fidelity/ray/fidelity/    Ray Tune's experiment of the re-runs (resumed by --resume)
    fidelity.csv              one row per re-trained trial: proxy and full objective, ranks, cost
    fidelity.json             the correlation, its p-value, the picks and the full budget
    fidelity.png              full-budget objective against proxy objective

Each re-run is a Tune trial of the sweep's own trial function (``spec["sources"]``
maps its ``source_trial`` to the sweep trial's searched values), so it runs on
the sweep's cluster as the sweep's trials did, as many at once as fit.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mat_dist.plumbing.errors import UserError
from mat_dist.tune.objective import CLEAN, COST_PASSES, COST_SECONDS, OBJECTIVE, ROBUST_ALL, SOURCE, trial_folder

FIDELITY_DIR = "fidelity"
PLAN_FILE = "plan.json"
FIDELITY_TABLE = "fidelity.csv"
FIDELITY_SUMMARY = "fidelity.json"
FIDELITY_PLOT = "fidelity.png"
EXPERIMENT = "fidelity"
# The budget a proxy shortens: the space's overrides of these keys are undone for the full-budget run.
BUDGET_KEYS = ("train.epochs", "data.limit_train")


@dataclass(frozen=True)
class FidelityResult:
    rows: list[dict[str, Any]]      # one per re-trained trial, as in fidelity.csv
    spearman: float                 # nan with fewer than 3 trials or a constant column
    p_value: float
    interrupted: bool               # re-runs left unfinished: continue with --resume


def rank_correlation(proxy: Sequence[float], full: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho between two paired columns and its two-sided p-value (scipy); nan when undefined."""
    from scipy.stats import spearmanr

    if len(proxy) != len(full):
        raise ValueError(f"unpaired columns: {len(proxy)} proxy values, {len(full)} full-budget values")
    if len(proxy) < 3 or len(set(proxy)) < 2 or len(set(full)) < 2:
        return math.nan, math.nan
    result = spearmanr(proxy, full)
    return float(result.statistic), float(result.pvalue)


def pick_trials(ranked: Sequence[dict[str, Any]], *, top: int, extra: int, seed: int) -> tuple[list[str], list[str]]:
    """The trial ids to re-train: the first ``top`` of the sweep's ranking, and ``extra`` drawn (seeded) from
    the rest of the trials that reported an objective."""
    scored = [r["trial_id"] for r in ranked if not math.isnan(float(r.get(OBJECTIVE, math.nan)))]
    best = scored[:top]
    rest = sorted(set(scored) - set(best))
    drawn = sorted(random.Random(seed).sample(rest, min(extra, len(rest))))
    return best, drawn


def full_budget_base(proxy_raw: dict, budget_raw: dict, *, overrides: dict[str, Any], full: dict[str, Any],
                     source: str) -> dict:
    """The sweep's base (``proxy_raw``: the space's overrides applied) with the budget keys the space
    overrides back at the base config's values (``budget_raw``), then ``full`` (``fidelity.full``) applied."""
    from mat_dist.core.run_config import config_from_dict
    from mat_dist.tune.space import get_key, set_space_key

    raw = copy.deepcopy(proxy_raw)
    for key in BUDGET_KEYS:
        if key in overrides:
            set_space_key(raw, key, get_key(budget_raw, key), where=f"{source}: the full budget's {key}")
    for key, value in full.items():
        set_space_key(raw, key, value, where=f"{source}: fidelity.full.{key}")
    config_from_dict(raw)  # UserError naming the key
    return raw


def searched_values(output: Path, trial_id: str, keys: Sequence[str]) -> dict[str, Any]:
    """The values a sweep trial searched, read back from its config.yaml, with its per-epoch schedule when it has
    one (a PBT trial: what it learned is the schedule, not its last values)."""
    from mat_dist.core.run_config import read_yaml
    from mat_dist.tune.objective import SCHEDULE
    from mat_dist.tune.space import get_key

    raw = read_yaml(trial_folder(output, trial_id) / "config.yaml")
    values = {key: get_key(raw, key) for key in keys}
    if raw.get("schedule"):
        values[SCHEDULE] = raw["schedule"]
    return values


def planned_top(output: Path) -> int | None:
    """How many top trials an earlier fidelity step of this sweep planned (None: none), so that a plain
    ``--resume`` finishes it."""
    path = output / FIDELITY_DIR / PLAN_FILE
    return len(json.loads(path.read_text())["top"]) if path.is_file() else None


def _plan(output: Path, plan: dict[str, Any]) -> None:
    from mat_dist.plumbing.atomic import write_atomic

    path = output / FIDELITY_DIR / PLAN_FILE
    if path.is_file():
        if json.loads(path.read_text()) != plan:
            raise UserError(f"{path.parent} holds a fidelity step with other trials or another full budget; "
                            f"delete that folder to measure again with these settings")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(plan, indent=1, sort_keys=True))


def run_fidelity(*, output: Path, space: Any, ranked: Sequence[dict[str, Any]], full_raw: dict, top: int, extra: int,
                 cluster: Any, shape: Any, concurrency: int, parent: Any, verbose: int) -> FidelityResult:
    """Re-train the picked trials at the full budget (a Tune experiment of its own) and measure the fidelity."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from mat_dist.tune.trials import ray_run_config, trainable, trial_statuses, unfinished

    best, drawn = pick_trials(ranked, top=top, extra=extra, seed=space.seed)
    picked = best + drawn
    if not picked:
        raise UserError("--fidelity: no trial of the sweep reported an objective; nothing to re-train")
    _plan(output, {"top": best, "random": drawn, "full_base": full_raw})
    folder = output / FIDELITY_DIR
    sources = {tid: searched_values(output, tid, space.keys) for tid in picked}
    fn = trainable(space, full_raw, cluster, shape, sweep_dir=folder, extra={"sources": sources})
    path = folder / "ray" / EXPERIMENT
    callbacks = []
    if parent is not None:
        from mat_dist.tune.trial_tracking import TrialTracking

        callbacks.append(TrialTracking(uri=parent.tracking_uri, experiment=full_raw["tracking"]["experiment"],
                                       parent_run_id=parent.run_id, sweep_dir=str(folder), base_raw=full_raw,
                                       run_prefix=f"fidelity-{Path(space.source).stem}", sources=sources))
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), fn, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn, param_space={SOURCE: tune.grid_search(picked)},
            tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max", scheduler=FIFOScheduler(), num_samples=1,
                                        search_alg=BasicVariantGenerator(max_concurrent=concurrency)),
            run_config=ray_run_config(EXPERIMENT, folder / "ray", cluster, shape, callbacks=callbacks,
                                      verbose=verbose))
    tuner.fit()
    statuses = trial_statuses(path)
    interrupted = unfinished(statuses, len(picked))
    by_id = {r["trial_id"]: r for r in ranked}
    epochs = int(full_raw["train"]["epochs"])
    rows = fidelity_rows([by_id[t] for t in picked], {t: _last(folder, t) for t in picked}, top=set(best),
                         full_epochs=epochs)
    rho, p = rank_correlation([r["proxy_objective"] for r in rows if r["complete"]],
                              [r["full_objective"] for r in rows if r["complete"]])
    write_fidelity(output, rows, rho=rho, p=p, plan={"top": best, "random": drawn}, full_raw=full_raw,
                   space=space, interrupted=interrupted)
    return FidelityResult(rows=rows, spearman=rho, p_value=p, interrupted=interrupted)


def _last(folder: Path, trial_id: str) -> dict[str, Any]:
    from mat_dist.plumbing.atomic import read_jsonl

    history = read_jsonl(trial_folder(folder, trial_id) / "metrics.jsonl")
    return history[-1] if history else {}


def _ranks(values: Sequence[float]) -> list[int]:
    """1 = the highest; ties share the better rank (the table's; the correlation uses scipy's average ranks)."""
    return [1 + sum(v > x for v in values) for x in values]


def fidelity_rows(proxy: Sequence[dict[str, Any]], full: dict[str, dict[str, Any]], *, top: set[str],
                  full_epochs: int) -> list[dict[str, Any]]:
    """One row per re-trained trial: its proxy figures (the sweep row) beside its full-budget run's last epoch."""
    rows = []
    for r in proxy:
        last = full.get(r["trial_id"], {})
        epochs = int(last.get("epoch", 0))
        rows.append({"trial_id": r["trial_id"], "picked": "top" if r["trial_id"] in top else "random",
                     "proxy_epochs": r["epochs"], "proxy_objective": float(r[OBJECTIVE]),
                     "full_epochs": epochs, "complete": epochs >= full_epochs,
                     "full_objective": float(last.get(OBJECTIVE, math.nan)),
                     "full_robust_all": float(last.get(ROBUST_ALL, math.nan)),
                     "full_clean": float(last.get(CLEAN, math.nan)),
                     "full_cost_passes": float(last.get(COST_PASSES, math.nan)),
                     "full_cost_seconds": float(last.get(COST_SECONDS, math.nan))})
    done = [r for r in rows if r["complete"]]
    for key, rank in (("proxy_objective", "proxy_rank"), ("full_objective", "full_rank")):
        for r, k in zip(done, _ranks([r[key] for r in done])):
            r[rank] = k
    return rows


def write_fidelity(output: Path, rows: Sequence[dict[str, Any]], *, rho: float, p: float, plan: dict[str, Any],
                   full_raw: dict, space: Any, interrupted: bool) -> None:
    from mat_dist.plumbing.atomic import write_atomic
    from mat_dist.tune.space import get_key

    columns = ["trial_id", "picked", "proxy_epochs", "proxy_objective", "proxy_rank", "full_epochs",
               "full_objective", "full_rank", "full_robust_all", "full_clean", "full_cost_passes",
               "full_cost_seconds", "complete"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(output / FIDELITY_TABLE, buf.getvalue())
    budget = {key: get_key(full_raw, key) for key in (*BUDGET_KEYS, *space.fidelity.full)}
    summary = {"spearman": rho, "p_value": p, "n": sum(r["complete"] for r in rows), **plan,
               "full_budget": budget, "interrupted": interrupted}
    write_atomic(output / FIDELITY_SUMMARY, json.dumps(summary, indent=1, default=str))
    plot_fidelity(rows, output / FIDELITY_PLOT, rho=rho, title=f"{Path(space.source).name}: proxy fidelity")


def plot_fidelity(rows: Sequence[dict[str, Any]], path: Path, *, rho: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    for kind, (color, marker) in {"top": ("tab:blue", "o"), "random": ("tab:orange", "s")}.items():
        pick = [r for r in rows if r["picked"] == kind and r["complete"]]
        if not pick:
            continue  # no empty legend entry
        ax.scatter([100 * r["proxy_objective"] for r in pick], [100 * r["full_objective"] for r in pick],
                   c=color, marker=marker, label=f"{kind} trials")
        for r in pick:
            ax.annotate(r["trial_id"].rsplit("_", 1)[-1], (100 * r["proxy_objective"], 100 * r["full_objective"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("proxy objective (%)")
    ax.set_ylabel("full-budget objective (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{title}\nSpearman rho {rho:.2f}" if not math.isnan(rho) else f"{title}\nSpearman rho undefined",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
