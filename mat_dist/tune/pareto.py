"""Cost as a second objective: the Pareto front of a sweep's robustness against its training cost.

Every trial row carries its validation union robust accuracy (all_attacks:
``val/robust_all`` at the base config's eval radii, before any constraint
zeroes the objective) and the cost it spent (``cost/passes``: forward + backward passes of the training
network, paper Table 6's count per batch times the batches trained;
``cost/seconds`` beside it). A trial is on the front when no other trial
reached at least its robustness at no more cost, and is better in one of the
two. Each row is a measured point: a trial that ASHA stopped after one epoch
is the model of that epoch at that epoch's cost.

``max_cost`` (``objective.max_cost`` of the space, in passes) makes cost a
constraint: a trial over it is not eligible as the sweep's best.

    pareto.csv   the front, cheapest first: trial, objective, cost, searched values
    pareto.png   every trial's (cost, objective), the front drawn through its points
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from mat_dist.tune.objective import CLEAN, COST_PASSES, COST_SECONDS, OBJECTIVE, ROBUST_ALL

PARETO_TABLE = "pareto.csv"
PARETO_PLOT = "pareto.png"


def _point(row: dict[str, Any]) -> tuple[float, float] | None:
    robust, cost = float(row.get(ROBUST_ALL, math.nan)), float(row.get(COST_PASSES, math.nan))
    if math.isnan(robust) or math.isnan(cost):
        return None
    return robust, cost


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row dominates (``val/robust_all`` at least as high at no more cost, and better in
    one), cheapest first. Rows without either take no part; of equal points the first is kept."""
    points = [(r, p) for r in rows if (p := _point(r)) is not None]
    front = []
    for i, (row, (obj, cost)) in enumerate(points):
        dominated = any((o >= obj and c <= cost and (o > obj or c < cost)) or (j < i and (o, c) == (obj, cost))
                        for j, (_, (o, c)) in enumerate(points) if j != i)
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: (float(r[COST_PASSES]), -float(r[ROBUST_ALL])))


def within_cost(row: dict[str, Any], max_cost: float | None) -> bool:
    """Eligible under the cost constraint: no constraint, or the trial spent at most ``max_cost`` passes."""
    if max_cost is None:
        return True
    cost = float(row.get(COST_PASSES, math.nan))
    return not math.isnan(cost) and cost <= max_cost


def write_pareto(output: Path, rows: Sequence[dict[str, Any]], *, keys: Sequence[str],
                 max_cost: float | None, title: str) -> list[dict[str, Any]]:
    """Write pareto.csv and pareto.png into ``output``; returns the front."""
    from mat_dist.plumbing.atomic import write_atomic

    front = pareto_front(rows)
    columns = ["trial_id", "status", "epochs", ROBUST_ALL, CLEAN, OBJECTIVE, COST_PASSES, COST_SECONDS,
               "within_max_cost",
               *(f"param/{k}" for k in keys)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in front:
        writer.writerow({**r, "within_max_cost": within_cost(r, max_cost),
                         **{f"param/{k}": _text(r.get(f"param/{k}")) for k in keys}})
    write_atomic(output / PARETO_TABLE, buf.getvalue())
    plot_pareto(rows, front, output / PARETO_PLOT, max_cost=max_cost, title=title)
    return front


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plot_pareto(rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], path: Path, *,
                max_cost: float | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    points = [p for r in rows if (p := _point(r)) is not None]
    if points:
        ax.scatter([c for _, c in points], [100 * o for o, _ in points], c="tab:gray", marker="o", alpha=0.6,
                   label="trial")
    if front:
        ax.step([float(r[COST_PASSES]) for r in front], [100 * float(r[ROBUST_ALL]) for r in front], where="post",
                c="tab:blue", marker="D", label="Pareto front")
    if max_cost is not None:
        ax.axvline(max_cost, c="tab:red", ls="--", label=f"max_cost {max_cost:g}")
    ax.set_xlabel("training cost: forward + backward passes")
    ax.set_ylabel("val union robust acc, all norms (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
