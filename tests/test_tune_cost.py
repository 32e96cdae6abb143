"""Cost as a second objective, on fixed tables: the Pareto front of robustness against training passes, the
max_cost constraint (over it: infeasible in the trial, never the sweep's best), and the cost a trial reports."""

from __future__ import annotations

import math

import pytest

from mat_dist.tune.objective import COST_PASSES, COST_SECONDS, cost_metrics, objective_metrics
from mat_dist.tune.pareto import pareto_front, within_cost
from mat_dist.tune.sweep import best_row, ranked_trials

NAN = math.nan


def _row(tid: str, robust: float, passes: float, *, status: str = "TERMINATED", stopped: bool = False,
         clean: float = 0.9, objective: float | None = None) -> dict:
    return {"trial_id": tid, "status": status, "stopped_early": stopped, "epochs": 3,
            "objective": robust if objective is None else objective, "val/robust_all": robust,
            "val/clean_acc": clean, COST_PASSES: passes, COST_SECONDS: passes / 100}


# (robust, passes): a dominates d (as robust, cheaper); b ties a in cost but is less robust; e equals c exactly;
# f has no cost recorded; g is the cheapest and least robust (on the front).
TABLE = [_row("a", 0.50, 200), _row("b", 0.45, 200), _row("c", 0.70, 600), _row("d", 0.50, 300),
         _row("e", 0.70, 600), _row("f", 0.80, NAN), _row("g", 0.10, 50), _row("h", 0.65, 800)]


def test_pareto_front_of_a_fixed_table() -> None:
    front = pareto_front(TABLE)
    # cheapest first; b and d are dominated by a, h by c, e repeats c, f has no cost
    assert [r["trial_id"] for r in front] == ["g", "a", "c"]


def test_pareto_front_against_brute_force_on_every_subset() -> None:
    """Every row off the front is dominated by one on it, and no row on it is dominated by any row."""
    rows = [r for r in TABLE if not math.isnan(r[COST_PASSES])]
    front = pareto_front(rows)

    def dominates(p: dict, q: dict) -> bool:
        return (p["val/robust_all"] >= q["val/robust_all"] and p[COST_PASSES] <= q[COST_PASSES]
                and (p["val/robust_all"] > q["val/robust_all"] or p[COST_PASSES] < q[COST_PASSES]))

    for q in front:
        assert not any(dominates(p, q) for p in rows)
    for q in rows:
        if q not in front:
            assert any(dominates(p, q) or (p["val/robust_all"], p[COST_PASSES]) == (q["val/robust_all"], q[COST_PASSES])
                       for p in front)


def test_max_cost_makes_trials_over_it_ineligible_as_best() -> None:
    rows = [_row("cheap", 0.40, 100), _row("dear", 0.90, 1000), _row("mid", 0.55, 400),
            _row("stopped", 0.95, 50, stopped=True)]
    assert best_row(rows)["trial_id"] == "dear"                  # no constraint: the most robust complete trial
    assert best_row(rows, max_cost=500)["trial_id"] == "mid"     # the most robust within 500 passes
    assert best_row(rows, max_cost=100)["trial_id"] == "cheap"
    assert best_row(rows, max_cost=10) is None                   # none within the budget: no best at all
    assert [r["trial_id"] for r in ranked_trials(rows, max_cost=500)] == ["mid", "cheap", "stopped", "dear"]
    assert within_cost(rows[1], None) and not within_cost(rows[1], 999) and within_cost(rows[1], 1000)


def test_a_trial_over_max_cost_is_infeasible() -> None:
    metrics = {"val/robust_all": 0.4, "val/clean_acc": 0.8, COST_PASSES: 600.0}
    assert objective_metrics(metrics, None, max_cost=600) == {"objective": 0.4, "feasible": 1.0}
    assert objective_metrics(metrics, None, max_cost=599) == {"objective": 0.0, "feasible": 0.0}
    assert objective_metrics(metrics, 0.9, max_cost=None) == {"objective": 0.0, "feasible": 0.0}


def test_cost_so_far_sums_the_earlier_epochs_seconds() -> None:
    history = [{"epoch": 1, "epoch_time_s": 2.0}, {"epoch": 2, "epoch_time_s": 3.0},
               {"epoch": 3, "epoch_time_s": 100.0}]  # a line past a restored checkpoint: not counted
    cost = cost_metrics({"epoch": 3, "epoch_time_s": 4.0, "train/passes": 120.0}, history)
    assert cost == {COST_PASSES: 120.0, COST_SECONDS: pytest.approx(9.0)}
