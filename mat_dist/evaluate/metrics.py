"""Robust accuracy from per-example rows: per attack, the per-example unions, transferability.

Definitions (one row per example and attack; ``success`` from the gate):

    robust(e, a)   = clean_correct(e) and not success(e, a)
    acc(a)         = mean_e robust(e, a)
    all_<p>        = mean_e  AND_{a of norm p} robust(e, a)   (the per-example union of the norm's attacks)
    all_attacks    = mean_e  AND_{every a}     robust(e, a)

so all_<p> <= acc(a) for every attack a of norm p, all_attacks <= all_<p> for
every p, and a clean-misclassified example is never robust. Working on
examples x attacks matrices keeps the union exact: a loose union (averaging
accuracies, or taking the minimum of per-attack accuracies) over-states it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from mat_dist.core.threats import Norm

def wilson_interval(successes: int, n: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), as fractions in [0, 1]; scipy's.

    Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1]
    and keeps a non-zero width at 0 and n successes, which robust accuracies near
    0% (a standard model at the paper's radii) and near 100% need. n = 0 gives (0, 1):
    no image says nothing.
    """
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest  # scipy.stats takes a second to import: only when a figure needs it

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence_level, method="wilson")
    return float(ci.low), float(ci.high)


def separated(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    """True when two 95% intervals do not overlap: the difference counts; otherwise it is a tie."""
    return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])


def _interval(robust: np.ndarray) -> list[float]:
    """The 95% Wilson interval of one per-example boolean column."""
    return list(wilson_interval(int(robust.sum()), int(robust.size)))


def _columns(table: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Columns of a pyarrow table, or of a dict of sequences, as numpy arrays."""
    if isinstance(table, dict):
        return {n: np.asarray(table[n]) for n in names}
    return {n: np.asarray(table.column(n).to_pylist()) for n in names}


def robust_matrix(table: Any) -> tuple[np.ndarray, list[str], dict[str, str], np.ndarray]:
    """(robust (E, A) bool, attack names in first-seen order, attack -> norm, example ids (E,)).

    Raises if some (example, attack) is missing or repeated: the union needs every cell once.
    """
    c = _columns(table, ["example_id", "attack", "norm", "success", "clean_correct"])
    attacks = list(OrderedDict.fromkeys(c["attack"].tolist()))
    norms: dict[str, str] = {}
    for a, n in zip(c["attack"].tolist(), c["norm"].tolist()):
        if norms.setdefault(a, n) != n:
            raise ValueError(f"attack {a} appears with two norms ({norms[a]}, {n})")
    examples = np.unique(c["example_id"])
    row = np.searchsorted(examples, c["example_id"])
    col = np.array([attacks.index(a) for a in c["attack"].tolist()], dtype=np.int64)
    filled = np.zeros((len(examples), len(attacks)), dtype=np.int64)
    np.add.at(filled, (row, col), 1)
    if (filled != 1).any():
        e, a = np.argwhere(filled != 1)[0]
        raise ValueError(f"example {examples[e]} has {filled[e, a]} rows for attack {attacks[a]}; need exactly 1")
    robust = np.zeros((len(examples), len(attacks)), dtype=bool)
    robust[row, col] = c["clean_correct"].astype(bool) & ~c["success"].astype(bool)
    clean = np.ones(len(examples), dtype=bool)
    np.logical_and.at(clean, row, c["clean_correct"].astype(bool))
    robust &= clean[:, None]  # clean-wrong on any row: not robust anywhere
    return robust, attacks, norms, examples


def union_summary(table: Any) -> dict[str, Any]:
    """Clean accuracy, accuracy per attack, all_<norm> and all_attacks (fractions in [0, 1])."""
    c = _columns(table, ["example_id", "clean_correct"])
    robust, attacks, norms, examples = robust_matrix(table)
    clean = np.ones(len(examples), dtype=bool)
    np.logical_and.at(clean, np.searchsorted(examples, c["example_id"]), c["clean_correct"].astype(bool))
    out: dict[str, Any] = {"examples": int(len(examples)), "clean": float(clean.mean()) if len(examples) else 0.0,
                           "attacks": {a: float(robust[:, i].mean()) for i, a in enumerate(attacks)}}
    # 95% intervals, each from its own per-example column: a union's from the union's rows (combining
    # the per-attack intervals would be wrong, as the attacks' successes are correlated).
    intervals: dict[str, list[float]] = {"clean": _interval(clean)}
    intervals.update({a: _interval(robust[:, i]) for i, a in enumerate(attacks)})
    for norm in Norm:
        idx = [i for i, a in enumerate(attacks) if norms[a] == norm.value]
        if idx:
            union = robust[:, idx].all(axis=1)
            out[f"all_{norm.value}"] = float(union.mean())
            intervals[f"all_{norm.value}"] = _interval(union)
    everything = robust.all(axis=1) if attacks else clean
    out["all_attacks"] = float(everything.mean())
    intervals["all_attacks"] = _interval(everything)
    out["intervals"] = intervals
    return out


def transfer_tables(table: Any) -> dict[str, Any]:
    """Per transfer attack: counts n_ij, ratios r_ij and each model's own robustness (paper Tables 1-3, 9-12).

    Over examples that both source i and target j classify correctly:
    n_ij = #(the attack on i succeeds and its adversarial also fools j),
    r_ij = n_ij / #(the attack on i succeeds), so r_ii = 1.
    ``robustness[i]`` is i's robust accuracy against the attack generated on
    i itself (paper Table 3 for sub-models), clean-wrong counted as broken.
    """
    cols = ["attack", "source", "target", "success", "clean_correct", "source_success", "source_clean_correct"]
    c = _columns(table, cols)
    out: dict[str, Any] = {}
    for attack in OrderedDict.fromkeys(c["attack"].tolist()):
        in_attack = c["attack"] == attack
        models = list(OrderedDict.fromkeys(c["source"][in_attack].tolist()))
        n = np.zeros((len(models), len(models)), dtype=np.int64)
        base = np.zeros_like(n)
        robustness = {}
        for i, s in enumerate(models):
            for j, t in enumerate(models):
                m = in_attack & (c["source"] == s) & (c["target"] == t)
                both = c["source_clean_correct"][m].astype(bool) & c["clean_correct"][m].astype(bool)
                fooled_source = both & c["source_success"][m].astype(bool)
                n[i, j] = int((fooled_source & c["success"][m].astype(bool)).sum())
                base[i, j] = int(fooled_source.sum())
                if s == t:
                    robust = c["clean_correct"][m].astype(bool) & ~c["success"][m].astype(bool)
                    robustness[s] = float(robust.mean()) if m.any() else float("nan")
        ratio = np.where(base > 0, n / np.maximum(base, 1), np.nan)
        out[attack] = {"models": models, "counts": n.tolist(), "ratios": ratio.tolist(),
                       "robustness": robustness}
    return out


def curve_points(table: Any) -> list[dict[str, Any]]:
    """Robust accuracy per curve job: rows (curve, attack, norm, x, robust_accuracy, examples)."""
    c = _columns(table, ["job", "group", "attack", "norm", "x_value", "success", "clean_correct"])
    points = []
    for job in OrderedDict.fromkeys(c["job"].tolist()):
        m = c["job"] == job
        robust = c["clean_correct"][m].astype(bool) & ~c["success"][m].astype(bool)
        points.append({"curve": "steps" if c["group"][m][0] == "curve_steps" else "radius",
                       "attack": str(c["attack"][m][0]), "norm": str(c["norm"][m][0]),
                       "x": float(c["x_value"][m][0]), "robust_accuracy": float(robust.mean()),
                       "examples": int(m.sum())})
    return sorted(points, key=lambda p: (p["curve"], p["attack"], p["x"]))
