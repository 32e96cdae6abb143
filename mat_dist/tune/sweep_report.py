"""The sweep's report.md: what was searched and how, the best trial, the Pareto front against cost, the proxy's
fidelity and the confirmation on the test images, each from the files the steps left in the sweep folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from mat_dist.tune.objective import CLEAN, COST_PASSES, COST_SECONDS, OBJECTIVE, ROBUST_ALL

REPORT_FILE = "report.md"


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}"


def _num(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.4g}"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(columns))) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _values(row: dict[str, Any], keys: Sequence[str]) -> str:
    from mat_dist.tune.pareto import _text

    return ", ".join(f"{k}={_text(row.get(f'param/{k}'))}" for k in keys)


def write_sweep_report(output: Path, *, space: Any, base_raw: dict, rows: Sequence[dict[str, Any]],
                       best: dict[str, Any] | None, front: Sequence[dict[str, Any]], max_cost: float | None,
                       interrupted: bool, wall_s: float) -> Path:
    """report.md: what was searched, the best trial, PBT's exploits, the Pareto front, the proxy's fidelity and
    the confirmation, each section from what its step left in ``output``."""
    from mat_dist.plumbing.atomic import write_atomic

    lines = _setup_section(space, base_raw, rows, max_cost=max_cost, interrupted=interrupted, wall_s=wall_s)
    lines += _best_section(space, best, max_cost)
    if space.scheduler.name.value == "pbt":
        lines += _pbt_section(output, rows, best)
    lines += _pareto_section(front, max_cost)
    lines += _fidelity_section(output, space.seed)
    lines += _confirm_section(output)
    path = output / REPORT_FILE
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _setup_section(space: Any, base_raw: dict, rows: Sequence[dict[str, Any]], *, max_cost: float | None,
                   interrupted: bool, wall_s: float) -> list[str]:
    """The title and how the sweep ran: base and overrides, searcher and scheduler, objective, wall time."""
    from mat_dist.core.run_config import config_from_dict
    from mat_dist.plumbing.console import plural
    from mat_dist.core.epoch_check import describe_check

    cfg = config_from_dict(base_raw)
    radii = ", ".join(f"{n.value} {e:g}" for n, e in cfg.eval.eps.items())
    check = describe_check(cfg.eval.attack, cfg.eval.steps, cfg.eval.targets)
    return [f"# Sweep `{Path(space.source).name}`", "",
            f"- Base config `{base_raw['name']}` with the space's overrides "
            f"({', '.join(f'{k}={v}' for k, v in space.overrides.items()) or 'none'}): the proxy every trial trains.",
            f"- Searcher `{space.searcher.name.value}` (seed {space.seed}), scheduler "
            f"`{space.scheduler.name.value}`" + _scheduler_text(space)
            + (f", wall-clock budget {space.time_budget_s:g} s" if space.time_budget_s is not None else "")
            + f"; {plural(len(rows), 'trial')}, {sum(r['stopped_early'] for r in rows)} stopped early, "
            f"{sum(r['status'] == 'ERROR' for r in rows)} failed"
            + ("; **interrupted** (continue with --resume)" if interrupted else "") + ".",
            f"- Objective: validation union robust accuracy over all norms under {check} on "
            f"{cfg.eval.examples} held-out validation images, at the base's eval radii ({radii})"
            + (f"; clean accuracy at least {100 * space.objective.min_clean_acc:.0f}%"
               if space.objective.min_clean_acc is not None else "")
            + (f"; training cost at most {max_cost:g} forward + backward passes" if max_cost is not None else "")
            + ".",
            f"- Wall time of this call: {wall_s:.0f} s.", ""]


def _scheduler_text(space: Any) -> str:
    """The scheduler's settings in parentheses (ASHA's and PBT's; FIFO has none)."""
    from mat_dist.plumbing.console import plural

    sched = space.scheduler
    if sched.name.value == "asha":
        return f" (grace {sched.grace_period}, reduction {sched.reduction_factor:g})"
    if sched.name.value == "pbt":
        return (f" (a decision every {plural(sched.perturbation_interval, 'epoch')} after epoch {sched.burn_in}, "
                f"the bottom {sched.quantile_fraction:g} copies the top, resampling {sched.resample_probability:g}, "
                f"{'synchronous' if sched.synch else 'asynchronous'})")
    return ""


def _best_section(space: Any, best: dict[str, Any] | None, max_cost: float | None) -> list[str]:
    from mat_dist.plumbing.console import plural

    if best is None:
        return ["## Best trial", "", "None eligible (no trial reported an objective"
                + (", or every one spent more than objective.max_cost" if max_cost is not None else "") + ").", ""]
    return ["## Best trial", "",
            f"`{best['trial_id']}`: objective {_pct(best[OBJECTIVE])}%, clean {_pct(best[CLEAN])}%, "
            f"{plural(best['epochs'], 'epoch')}, {_num(best[COST_PASSES])} passes ({_num(best[COST_SECONDS])} s); "
            f"{_values(best, space.keys)}. Config: `best_config.yaml`.", ""]


def _pareto_section(front: Sequence[dict[str, Any]], max_cost: float | None) -> list[str]:
    from mat_dist.tune.pareto import PARETO_PLOT

    lines = ["## Robustness against training cost (Pareto front)", "",
             "Each trial is a measured point: its last reported validation union (all_attacks) and the forward + "
             "backward passes it trained (a trial ASHA stopped is its last epoch's model at that epoch's cost). "
             "The front holds the trials no other reached at least as robust at no more cost.", "",
             f"![Pareto front]({PARETO_PLOT})", ""]
    lines += _table(["trial", "epochs", "val all_attacks (%)", "clean (%)", "passes", "seconds", "within max_cost"],
                    [[r["trial_id"], str(r["epochs"]), _pct(r[ROBUST_ALL]), _pct(r[CLEAN]), _num(r[COST_PASSES]),
                      _num(r[COST_SECONDS]),
                      "yes" if max_cost is None or float(r[COST_PASSES]) <= max_cost else "no"] for r in front])
    return lines + [""]


def _fidelity_section(output: Path, seed: int) -> list[str]:
    """The proxy's rank correlation and the re-trained trials, when the fidelity step left its files."""
    import csv

    from mat_dist.tune.fidelity import FIDELITY_PLOT, FIDELITY_SUMMARY, FIDELITY_TABLE

    fid_path = output / FIDELITY_SUMMARY
    if not fid_path.is_file():
        return []
    fid = json.loads(fid_path.read_text())
    with (output / FIDELITY_TABLE).open() as f:
        table = list(csv.DictReader(f))
    rho = fid["spearman"]
    budget = ", ".join(f"{k}={v}" for k, v in fid["full_budget"].items())
    lines = ["## Proxy fidelity", "",
             f"The top {len(fid['top'])} trials and {len(fid['random'])} drawn at random (seed {seed}) "
             f"re-trained at the full budget ({budget}). Spearman rank correlation between the proxy objective "
             f"and the full-budget objective over {fid['n']} trials: "
             + (f"**{rho:.2f}** (p = {fid['p_value']:.2g})." if rho is not None and not math.isnan(rho)
                else "undefined (fewer than 3 trials, or a constant column).")
             + (" Interrupted: continue with --resume." if fid.get("interrupted") else ""), "",
             f"![proxy fidelity]({FIDELITY_PLOT})", ""]
    lines += _table(["trial", "picked", "proxy epochs", "proxy (%)", "proxy rank", "full (%)", "full rank",
                     "full clean (%)", "full passes"],
                    [[r["trial_id"], r["picked"], r["proxy_epochs"], _pct(float(r["proxy_objective"])),
                      r.get("proxy_rank") or "-", _pct(float(r["full_objective"])), r.get("full_rank") or "-",
                      _pct(float(r["full_clean"])), _num(float(r["full_cost_passes"]))] for r in table])
    return lines + [""]


def _confirm_section(output: Path) -> list[str]:
    """The confirmation on the test images, when --confirm left confirm.json."""
    from mat_dist.tune.confirm import CONFIRM_FILE

    confirm_path = output / CONFIRM_FILE
    if not confirm_path.is_file():
        return []
    conf = json.loads(confirm_path.read_text())
    lines = ["## Confirmation on the test images", "",
             f"The best trial's config (`{conf['best_trial']}`) and the base config, each trained with "
             f"{conf['seeds']} seed(s) at the full budget. {conf['note']}", ""]
    lines += _table(conf["table"]["columns"], conf["table"]["rows"])
    return lines + ["", f"Verdict: {conf['verdict']}. The reproduction's own report: `{conf['report']}`.", ""]


def _pbt_section(output: Path, rows: Sequence[dict[str, Any]], best: dict[str, Any] | None) -> list[str]:
    """The exploits of every trial, and the best trial's schedule: what ``best_config.yaml`` replays."""
    from mat_dist.core.run_config import load_config
    from mat_dist.tune.objective import trial_folder
    from mat_dist.tune.pbt import exploits

    done = [(r["trial_id"], e) for r in rows for e in exploits(trial_folder(output, r["trial_id"]))]
    lines = ["## Population Based Training", "",
             f"{len(done)} exploit(s): a trial took another's weights at the epoch shown and went on with "
             f"perturbed values.", ""]
    if done:
        lines += _table(["trial", "epoch", "copied", "values after"],
                        [[tid, str(e["epoch"]), e["from_trial"],
                          ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in e["after"].items())]
                         for tid, e in done])
        lines.append("")
    if best is not None:
        cfg = load_config(trial_folder(output, best["trial_id"]) / "config.yaml")
        lines += [f"The best trial's schedule (`best_config.yaml` replays it): from epoch (0-based)", ""]
        lines += _table(["epoch", "eps", "alpha", "loss_weights"],
                        [[str(p.epoch), *("-" if v is None else ", ".join(f"{x:.4g}" for x in v)
                                          for v in (p.eps, p.alpha, p.loss_weights))] for p in cfg.schedule])
        lines.append("")
    return lines
