"""The reproduction's report: the paper's tables with the published numbers beside ours, figures, commentary.

Inputs are the files the pipeline left (each run's ``metrics.jsonl``, each
evaluation's ``summary.json``); the report never re-runs anything, so it can be
re-written from a finished output folder. Every table is built as data first
(``Table``: columns and rows of strings), written to ``report.json`` and
rendered to markdown, so tests check the shapes on the data.

Figures: fig1_cross_gradient.png (paper Fig. 1), fig2_steps.png (Fig. 2),
fig3_radius.png (Fig. 3), fig4_disagreement.png (Fig. 4).
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mat_dist.plumbing.atomic import read_jsonl, write_atomic
from mat_dist.evaluate.metrics import separated
from mat_dist.reproduce.presets import PAPER_SETUP, Preset
from mat_dist.core.threats import Norm

PAPER_TABLES = Path(__file__).resolve().parent.parent / "reference" / "paper_tables.csv"
MAIN_TABLE = {"mnist": "MAT paper Table 4", "cifar10": "MAT paper Table 5"}
NORMS = (Norm.LINF, Norm.L2, Norm.L1)  # the paper's row order
NORM_LABEL = {Norm.LINF: "l_inf", Norm.L2: "l_2", Norm.L1: "l_1"}
UNION_ROWS = ("all_linf", "all_l2", "all_l1", "all_attacks")
PASS_FORMULA = {"standard": "1 / 1", "at": "K+1 / K+1", "mat": "K+1 / K+1", "mat_same_norm": "K+1 / K+1",
                "ensemble_at": "M(K+1) / M(K+1)", "mimo_at": "K+1 / MK+1", "msd": "(1+N)K+1 / K+1",
                "mat_msd": "(1+N)K+1 / K+1", "sat": "K+1 / K+1", "e_at": "K+1 / K+1", "avg": "N(K+1) / N(K+1)",
                "max": "N(K+1) / N(K+1)"}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> list[str]:
        right = ["---:" if i else "---" for i in range(len(self.columns))]
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "|".join(right) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return lines + ([""] + [self.note] if self.note else [])

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows}


@dataclass(frozen=True)
class Written:
    report: Path
    figures: list[Path]
    data: dict[str, Any]


# ---------------------------------------------------------------- inputs

def paper_numbers() -> dict[tuple[str, str, str, str], float]:
    """(source, dataset, method, metric) -> published value (percent, or minutes for Table 7)."""
    with PAPER_TABLES.open() as f:
        return {(r["source"], r["dataset"], r["method"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)}


@dataclass
class MethodData:
    name: str
    method: str
    paper_name: str | None
    table7_name: str | None
    num_members: int
    steps: int
    norms: list[str]
    epochs: int
    summary: dict[str, Any]            # the first seed's evaluation (transfer tables, curves, cost)
    metrics: list[dict[str, Any]]
    seed_summaries: list[dict[str, Any]] = field(default_factory=list)  # every seed's, seed 0 first
    eval_dirs: list[Path] = field(default_factory=list)  # every seed's evaluation folder (results.parquet)

    def values(self, metric: str) -> list[float]:
        """``metric`` (clean, an attack, all_<norm>, all_attacks) in every seed's evaluation."""
        out = []
        for s in self.seed_summaries or [self.summary]:
            v = s["attacks"].get(metric) if metric in s.get("attacks", {}) else s.get(metric)
            if v is not None:
                out.append(float(v))
        return out

    def mean(self, metric: str) -> float | None:
        v = self.values(metric)
        return statistics.fmean(v) if v else None

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The union of the seeds' 95% Wilson intervals: sampling error over images and spread over seeds.

        A difference between two methods counts only when their intervals do not overlap."""
        bounds = [s.get("intervals", {}).get(metric) for s in self.seed_summaries or [self.summary]]
        bounds = [b for b in bounds if b is not None]
        if not bounds:
            return None
        return min(b[0] for b in bounds), max(b[1] for b in bounds)


def collect(preset: Preset, outcomes: Sequence[Any], configs: Mapping[str, Any]) -> list[MethodData]:
    """One MethodData per method; its seeds' evaluations (``--seeds``) go into ``seed_summaries``."""
    out: dict[str, MethodData] = {}
    for o in sorted(outcomes, key=lambda o: o.seed):
        cfg = configs[o.label]
        summary = json.loads((o.eval_dir / "summary.json").read_text())
        if o.spec.name in out:
            out[o.spec.name].seed_summaries.append(summary)
            out[o.spec.name].eval_dirs.append(o.eval_dir)
            continue
        out[o.spec.name] = MethodData(name=o.spec.name, method=o.spec.method, paper_name=o.spec.paper_name,
                                      table7_name=o.spec.table7_name, num_members=cfg.model.num_members,
                                      steps=cfg.attack.steps, norms=[n.value for n in cfg.attack.norms],
                                      epochs=cfg.train.epochs, summary=summary,
                                      metrics=read_jsonl(o.run_dir / "metrics.jsonl"), seed_summaries=[summary],
                                      eval_dirs=[o.eval_dir])
    return list(out.values())


class Pairing:
    """Whether two methods differ on all_attacks: their paired difference on the test images both were attacked
    on (every seed of each, ``evaluate.paired``) where both have per-image results, else whether their
    intervals stay apart."""

    def __init__(self, data: Sequence[MethodData]):
        self.by_name = {d.name: d for d in data}
        from mat_dist.evaluate.paired import read_seed_unions

        self._unions = {d.name: read_seed_unions(d.eval_dirs) for d in data}
        self.paired = all(u is not None for u in self._unions.values())  # every comparison is paired

    def difference(self, a: str, b: str):
        """a - b (a PairedDifference), or None without per-image results on a common test image."""
        from mat_dist.evaluate.paired import paired_on_shared_images

        ua, ub = self._unions.get(a), self._unions.get(b)
        return None if ua is None or ub is None else paired_on_shared_images(ua, ub)

    def apart(self, a: str, b: str) -> bool:
        d = self.difference(a, b)
        if d is not None:
            return d.separated
        return separated(self.by_name[a].interval("all_attacks"), self.by_name[b].interval("all_attacks"))


def cell(d: MethodData, metric: str) -> str:
    """A table cell: 'mean [lo, hi]' for one seed, 'mean +- sd (n seeds) [lo, hi]' for several."""
    values = d.values(metric)
    if not values:
        return "-"
    bounds = d.interval(metric)
    text = f"{100 * statistics.fmean(values):.1f}"
    if len(values) > 1:
        text += f" ± {100 * statistics.stdev(values):.1f}"
    return text + (f" [{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]" if bounds else "")


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _minutes(x: float) -> str:
    """Two decimals, or two significant digits below 0.1 min: a tiny preset's training (a few seconds on a fast
    machine) would read 0.00."""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


# ---------------------------------------------------------------- invariants

def union_violations(summary: Mapping[str, Any]) -> list[str]:
    """all_<p> <= acc(a) for every attack a of norm p; all_attacks <= all_<p>; and all <= clean."""
    bad = []
    info, acc = summary["attack_info"], summary["attacks"]
    for norm in Norm:
        key = f"all_{norm.value}"
        if key not in summary:
            continue
        for a, i in info.items():
            if i["norm"] == norm.value and summary[key] > acc[a] + 1e-12:
                bad.append(f"{key} {summary[key]:.4f} > {a} {acc[a]:.4f}")
        if summary["all_attacks"] > summary[key] + 1e-12:
            bad.append(f"all_attacks {summary['all_attacks']:.4f} > {key} {summary[key]:.4f}")
    for a, v in acc.items():
        if v > summary["clean"] + 1e-12:
            bad.append(f"{a} {v:.4f} > clean {summary['clean']:.4f}")
    return bad


# ---------------------------------------------------------------- tables

def main_table(preset: Preset, data: list[MethodData], paper: dict) -> Table:
    """Paper Table 4/5 shape: rows attacks (by norm) + all_<norm> + all_attacks + clean; columns methods."""
    source = MAIN_TABLE[preset.paper_dataset]
    info = data[0].summary["attack_info"]
    columns = ["row", "radius"]
    has_paper = {}
    for d in data:
        columns.append(d.name)
        has_paper[d.name] = d.paper_name is not None and any(
            k[0] == source and k[1] == preset.paper_dataset and k[2] == d.paper_name for k in paper)
        if has_paper[d.name]:
            columns.append(f"{d.name} (paper)")
    table = Table(f"Robust accuracy (%), paper Table {source[-1]} shape", columns)

    def row(label: str, radius: str, metric: str) -> None:
        cells = [label, radius]
        for d in data:
            cells.append(cell(d, metric))
            if has_paper[d.name]:
                cells.append(_num(paper.get((source, preset.paper_dataset, d.paper_name, metric))))
        table.rows.append(cells)

    for norm in NORMS:
        names = [a for a, i in info.items() if i["norm"] == norm.value]
        for a in names:
            row(a, f"{info[a]['eps']:g}", a)
        if names:
            row(f"all_{norm.value}", "", f"all_{norm.value}")
    row("all_attacks", "", "all_attacks")
    row("clean", "", "clean")
    seeds = max(len(d.seed_summaries) for d in data)
    table.note = ("Cells: robust accuracy (%) " + (f"mean ± standard deviation over {seeds} seeds, " if seeds > 1
                                                   else "of one trained model, ")
                  + "then its 95% interval [lo, hi]: the Wilson interval over the test images"
                  + (", widened to cover every seed's" if seeds > 1 else "")
                  + ". The commentary below says whether two methods differ on all attacks from their paired "
                  "difference on the same test images, which separates more than these intervals' overlap.")
    return table


def same_norm_table(data: list[MethodData]) -> Table | None:
    """Paper Table 8 shape: MAT with a different norm per sub-model vs one norm for every sub-model."""
    chosen = [d for d in data if d.method in ("mat", "mat_same_norm")]
    if len(chosen) < 2:
        return None
    table = Table("MAT vs MAT with one norm for all sub-models (%), paper Table 8 shape",
                  ["row"] + [f"{d.name} ({'/'.join(d.norms)})" for d in chosen])
    for key in ("clean", *UNION_ROWS):
        if all(key in d.summary for d in chosen):
            table.rows.append([key] + [_pct(d.summary[key]) for d in chosen])
    return table


def submodel_tables(preset: Preset, data: list[MethodData], paper: dict) -> list[Table]:
    """Paper Table 3 shape: robustness of the ensemble and of each sub-model to the attack made on itself."""
    tables = []
    for d in data:
        transfer = d.summary.get("transfer") or {}
        if d.num_members < 2 or not transfer:
            continue
        attacks = list(transfer)
        with_paper = d.name == "mat" and preset.paper_dataset == "mnist"
        columns = ["model"]
        for a in attacks:
            columns += [a] + ([f"{a} (paper)"] if with_paper else [])
        table = Table(f"{d.name}: robust accuracy (%) of each model against the attack generated on itself "
                      f"(paper Table 3 shape)", columns)
        for j, model in enumerate(transfer[attacks[0]]["models"]):
            trained = f" ({d.norms[j - 1]})" if j > 0 and len(d.norms) >= j else ""
            cells = [f"{model}{trained}"]
            paper_name = "mat" if j == 0 else f"mat_sub{j}"
            for a in attacks:
                cells.append(_pct(transfer[a]["robustness"].get(model)))
                if with_paper:
                    cells.append(_num(paper.get(("MAT paper Table 3", "mnist", paper_name, a))))
            table.rows.append(cells)
        tables.append(table)
    return tables


def transfer_sections(data: list[MethodData]) -> list[Table]:
    """Paper Tables 1, 2, 9-12 shape: n_ij (r_ij) per attack, for every method with several sub-models."""
    tables = []
    for d in data:
        if d.num_members < 2:
            continue
        for attack, t in (d.summary.get("transfer") or {}).items():
            models = t["models"]
            table = Table(f"{d.name}, attack {attack}: adversarial examples made on the row model, scored on the "
                          f"column model; n_ij (r_ij)", ["from \\ on"] + models)
            for i, s in enumerate(models):
                cells = [f"{t['counts'][i][j]} ({t['ratios'][i][j]:.2f})" if t["ratios"][i][j] is not None
                         and t["ratios"][i][j] == t["ratios"][i][j] else f"{t['counts'][i][j]} (-)"
                         for j in range(len(models))]
                table.rows.append([s] + cells)
            tables.append(table)
    return tables


def curve_tables(data: list[MethodData]) -> dict[str, Table]:
    """Figures 2 and 3 as numbers: robust accuracy (%) per (attack, x), one column per method."""
    out = {}
    for curve, title, fig in (("steps", "attack steps", "figure2"), ("radius", "radius", "figure3")):
        keys = []
        for d in data:
            for p in d.summary.get("curves") or []:
                if p["curve"] == curve and (p["attack"], p["x"]) not in keys:
                    keys.append((p["attack"], p["x"]))
        if not keys:
            continue
        keys.sort()
        table = Table(f"Robust accuracy (%) against {title} (paper Figure {fig[-1]})",
                      ["attack", "steps" if curve == "steps" else "eps"] + [d.name for d in data])
        for a, x in keys:
            cells = [a, f"{x:g}"]
            for d in data:
                v = next((p["robust_accuracy"] for p in d.summary.get("curves") or []
                          if p["curve"] == curve and p["attack"] == a and p["x"] == x), None)
                cells.append(_pct(v))
            table.rows.append(cells)
        out[fig] = table
    return out


def diag_series(data: list[MethodData], name: str) -> dict[str, list[tuple[int, float]]]:
    """``<method>/m<j>`` -> [(epoch, value)] of diag/<name>_m<j> over training."""
    series: dict[str, list[tuple[int, float]]] = {}
    for d in data:
        for row in d.metrics:
            for j in range(d.num_members):
                key = f"diag/{name}_m{j}"
                if key in row:
                    series.setdefault(f"{d.name}/m{j} ({d.norms[j] if j < len(d.norms) else '?'})", []).append(
                        (int(row["epoch"]), float(row[key])))
    return series


def diag_table(series: dict[str, list[tuple[int, float]]], title: str) -> Table | None:
    if not series:
        return None
    epochs = sorted({e for pts in series.values() for e, _ in pts})
    table = Table(title, ["epoch"] + list(series))
    for e in epochs:
        table.rows.append([str(e)] + [next((f"{v:.3f}" for ep, v in pts if ep == e), "-")
                                      for pts in series.values()])
    return table


def cost_table(preset: Preset, data: list[MethodData], paper: dict) -> Table:
    """Paper Tables 6-7: passes per batch (the code's invariants) and measured time per method."""
    from mat_dist.bench.method_costs import table6_passes

    table = Table("Training cost: passes per batch (paper Table 6) and measured time (paper Table 7)",
                  ["method", "networks x heads", "K", "fwd / bwd (formula)", "fwd", "bwd", "epochs",
                   "s / epoch (median)", "training (min)", "paper (min)", "evaluation (s)"])
    for d in data:
        fwd, bwd = table6_passes(d.method, d.steps, d.num_members, norms=len(d.norms))
        times = [float(r["epoch_time_s"]) for r in d.metrics if "epoch_time_s" in r]
        shape = f"{d.num_members} x 1" if d.method == "ensemble_at" else f"1 x {d.num_members}"
        paper_min = paper.get(("MAT paper Table 7", preset.paper_dataset, d.table7_name, "train_minutes")) \
            if d.table7_name else None
        eval_s = (d.summary.get("meta") or {}).get("wall_time_s")
        table.rows.append([d.name, shape, str(d.steps), PASS_FORMULA.get(d.method, "?"), str(fwd), str(bwd),
                           str(len(times)), f"{statistics.median(times):.1f}" if times else "-",
                           _minutes(sum(times) / 60) if times else "-", _num(paper_min),
                           f"{eval_s:.0f}" if eval_s is not None else "-"])
    table.note = ("Passes per batch follow the paper's Table 6 formulas (N = candidate norms of MSD; an ensemble "
                  "counts each of its M networks). They are invariants of the code: tests/test_methods.py counts "
                  "the backbone's forward and backward passes with hooks for every method and asserts these "
                  "formulas, and tests/test_bench.py does the same for `matd bench`. Times are measured: each "
                  "epoch's wall time from metrics.jsonl, which includes the per-epoch validation check (PGD on "
                  "the validation slice); 'training' is their sum (resumed runs count each epoch once). "
                  "The paper's minutes are for its models on one GPU (at: the paper's single AT row).")
    return table


# ---------------------------------------------------------------- commentary

def _kendall_pairs(ours: dict[str, float], theirs: dict[str, float], pairing: Pairing | None = None,
                   ) -> tuple[int, int, list[str], list[str]]:
    """(pairs ordered alike, pairs the paper orders, pairs we order the other way, pairs we tie).

    With ``pairing``, a pair it does not set apart is a tie, whatever the order of the means.
    """
    names = [n for n in ours if n in theirs]
    agree, total, flipped, tied = 0, 0, [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if theirs[a] == theirs[b]:
                continue
            total += 1
            hi, lo = (a, b) if theirs[a] > theirs[b] else (b, a)
            if ours[hi] == ours[lo] or (pairing is not None and not pairing.apart(hi, lo)):
                tied.append(f"{hi} and {lo} ({100 * ours[hi]:.1f} vs {100 * ours[lo]:.1f})")
            elif ours[hi] > ours[lo]:
                agree += 1
            else:
                flipped.append(f"the paper has {hi} above {lo} ({theirs[hi]:.1f} vs {theirs[lo]:.1f}), "
                               f"we have {100 * ours[hi]:.1f} vs {100 * ours[lo]:.1f}")
    return agree, total, flipped, tied


def commentary(preset: Preset, data: list[MethodData], paper: dict) -> tuple[list[str], dict[str, Any]]:
    """Factual sentences comparing our numbers with the paper's; also returned as data.

    Every comparison of ours counts a difference only when its paired difference's 95% interval (on the same
    test images, every seed of each) excludes 0; without per-image results, when the two methods' 95%
    intervals do not overlap."""
    source, ds = MAIN_TABLE[preset.paper_dataset], preset.paper_dataset
    lines: list[str] = []
    facts: dict[str, Any] = {}

    def theirs(metric: str) -> dict[str, float]:
        return {d.name: paper[(source, ds, d.paper_name, metric)] for d in data
                if d.paper_name and (source, ds, d.paper_name, metric) in paper}

    ours_all = {d.name: d.mean("all_attacks") for d in data}
    intervals = {d.name: d.interval("all_attacks") for d in data}
    pairing = Pairing(data)
    rule = "paired on the same test images" if pairing.paired else "intervals overlap"
    order_ours = sorted(ours_all, key=lambda n: -ours_all[n])
    lines.append("- Ranking by *all attacks* (ours, best first, mean and 95% interval): "
                 + ", ".join(f"{n} {_pct(ours_all[n])}" + (f" [{_pct(intervals[n][0])}, {_pct(intervals[n][1])}]"
                                                           if intervals[n] else "") for n in order_ours) + ".")
    paper_all = theirs("all_attacks")
    if paper_all:
        order_paper = sorted(paper_all, key=lambda n: -paper_all[n])
        lines.append("- The paper's ranking of the methods it reports: "
                     + ", ".join(f"{n} {paper_all[n]:.1f}" for n in order_paper) + ".")
        agree, total, flipped, tied = _kendall_pairs(ours_all, paper_all, pairing)
        facts["ranking_pairs_agree"], facts["ranking_pairs"], facts["ranking_pairs_tied"] = agree, total, len(tied)
        lines.append(f"- Of the {total} pairs of these methods that the paper orders, we order {agree} the same way "
                     f"by more than the {'paired interval' if pairing.paired else 'intervals'}"
                     + (f", tie {len(tied)} ({rule}: {'; '.join(tied)})" if tied else "")
                     + (f", and order {len(flipped)} the other way: " + "; ".join(flipped) if flipped else "") + ".")
    if "mat" in ours_all:
        beaten = [n for n in ours_all if n != "mat" and ours_all["mat"] > ours_all[n] and pairing.apart("mat", n)]
        below = [n for n in ours_all if n != "mat" and ours_all["mat"] < ours_all[n] and pairing.apart("mat", n)]
        ties = [n for n in ours_all if n != "mat" and n not in beaten and n not in below]
        facts["mat_beats"], facts["mat_below"], facts["mat_ties"] = beaten, below, ties
        lines.append(f"- MAT's *all attacks* accuracy ({_pct(ours_all['mat'])}%) is above that of "
                     f"{', '.join(beaten) or 'no other method'} by more than the "
                     f"{'paired interval' if pairing.paired else 'intervals'}"
                     + (f"; below {', '.join(below)}" if below else "")
                     + (f"; tied with {', '.join(ties)}" if ties else "") + ".")
        if "mat" in paper_all:
            above = [n for n in paper_all if n != "mat" and paper_all["mat"] > paper_all[n]]
            not_above = [n for n in paper_all if n != "mat" and paper_all["mat"] <= paper_all[n]]
            lines.append(f"- In the paper MAT ({paper_all['mat']:.1f}%) is above {', '.join(above) or 'no method'}"
                         + (f" and not above {', '.join(not_above)}" if not_above else "") + " on *all attacks* "
                         "(the paper states no intervals).")
    for norm in NORMS:
        key = f"all_{norm.value}"
        ours = {d.name: d.mean(key) for d in data if key in d.summary}
        pap = theirs(key)
        if ours and pap:
            best_ours = max((n for n in ours if n in pap), key=lambda n: ours[n], default=None)
            best_paper = max(pap, key=lambda n: pap[n])
            if best_ours is not None:
                lines.append(f"- Best on *all {NORM_LABEL[norm]}* among the paper's methods: ours {best_ours} "
                             f"({_pct(ours[best_ours])}%), the paper's {best_paper} ({pap[best_paper]:.1f}%)"
                             + (": agree." if best_ours == best_paper else ": differ."))
    clean_ours = {d.name: d.summary["clean"] for d in data}
    clean_paper = theirs("clean")
    gaps = [100 * clean_ours[n] - clean_paper[n] for n in clean_paper if n in clean_ours]
    if gaps:
        lines.append(f"- Clean accuracy: ours minus the paper's ranges from {min(gaps):+.1f} to {max(gaps):+.1f} "
                     f"points over {len(gaps)} methods.")
    warn = {d.name: len(d.summary.get("warnings") or []) for d in data}
    flagged = [f"{n} ({k})" for n, k in warn.items() if k]
    lines.append("- Sanity checks of the evaluator (signs of gradient masking): "
                 + (f"warnings for {', '.join(flagged)}; see each evaluation's report.md." if flagged
                    else "none for any method."))
    if not preset.radii_match_paper():
        lines.append("- Our radii and data differ from the paper's (see the top of this report), so the numbers "
                     "are not directly comparable; the comparison is of rankings, not of values.")
    return lines, facts


# ---------------------------------------------------------------- figures

def _plot_series(series: dict[str, list[tuple[int, float]]], path: Path, *, ylabel: str, title: str) -> Path | None:
    if not series:
        return None
    from mat_dist.evaluate.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    styles = ["-", "--", ":", "-."]
    methods = list(dict.fromkeys(k.split("/")[0] for k in series))
    for key, pts in series.items():
        style = styles[methods.index(key.split("/")[0]) % len(styles)]
        ax.plot([e for e, _ in pts], [v for _, v in pts], style, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)
    return path


def _plot_curves(data: list[MethodData], curve: str, path: Path, title: str) -> Path | None:
    attacks = list(dict.fromkeys(p["attack"] for d in data for p in d.summary.get("curves") or []
                                 if p["curve"] == curve))
    if not attacks:
        return None
    from mat_dist.evaluate.plots import accuracy_panels, pyplot, save_figure, style_accuracy_axis

    fig, axes = accuracy_panels(len(attacks), width=4.5)
    for ax, attack in zip(axes, attacks):
        for i, d in enumerate(data):
            pts = sorted((p["x"], p["robust_accuracy"]) for p in d.summary.get("curves") or []
                         if p["curve"] == curve and p["attack"] == attack)
            if pts:  # 10 colours, then the same colours dashed: 11 methods must not share a line look
                ax.plot([x for x, _ in pts], [100 * v for _, v in pts], ["-", "--", ":"][i // 10 % 3],
                        color=f"C{i % 10}", marker="o", label=d.name)
        ax.set_title(attack, fontsize=10)
        style_accuracy_axis(ax, curve, radius_label="radius eps (pixel units)")
    axes[0].legend(fontsize=7)
    save_figure(fig, path, title=title)
    pyplot().close(fig)
    return path


def _plot_figures(data: list[MethodData], series: Mapping[str, dict[str, list[tuple[int, float]]]],
                  output: Path) -> list[Path]:
    """Paper Figures 1-4 as PNGs in ``output``: those with something to draw."""
    return [p for p in (
        _plot_series(series["figure1"], output / "fig1_cross_gradient.png",
                     ylabel="||cross gradient|| / ||true gradient||",
                     title="Cross-gradient norm over the true gradient's norm (paper Figure 1)"),
        _plot_curves(data, "steps", output / "fig2_steps.png", "Robust accuracy against attack steps (paper Figure 2)"),
        _plot_curves(data, "radius", output / "fig3_radius.png", "Robust accuracy against radius (paper Figure 3)"),
        _plot_series(series["figure4"], output / "fig4_disagreement.png", ylabel="disagreement E_p",
                     title="Disagreement of the approximate and true steps (paper Figure 4)"),
    ) if p is not None]


# ---------------------------------------------------------------- the page

def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("torch", "foolbox", "pyautoattack", "ray", "mlflow"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def _machine() -> str:
    from mat_dist.evaluate.eval_report import machine

    text = machine()
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - the machine line must never stop a report
        pass
    return text


DIAGNOSTICS = (("figure1", "Figure 1: cross-gradient ratio", "cross_ratio", "fig1_cross_gradient.png"),
               ("figure4", "Figure 4: disagreement E_p", "disagreement", "fig4_disagreement.png"))
CURVE_FIGURES = (("figure2", "fig2_steps.png"), ("figure3", "fig3_radius.png"))


@dataclass(frozen=True)
class ReportTables:
    """Every table of the report, built from the data before a line is written."""

    main: Table                         # paper Tables 4/5
    same_norm: Table | None             # Table 8
    submodel: list[Table]               # Table 3, one per method with sub-models
    transfer: list[Table]               # Tables 1, 2, 9-12
    curves: dict[str, Table]            # figure2, figure3
    diagnostics: dict[str, Table | None]  # figure1, figure4 (None: nothing logged)
    cost: Table                         # Tables 6-7

    def by_key(self) -> dict[str, Table]:
        """report.json's tables: keyed and ordered as they have always been."""
        out = {"table4_5": self.main, **({"table8": self.same_norm} if self.same_norm is not None else {})}
        out.update({key: t for key, t in self.diagnostics.items() if t is not None})
        out["table6_7"] = self.cost
        out.update({f"table3/{data_name(t)}": t for t in self.submodel})
        out.update({f"transfer/{t.title.split(',')[0]}/{t.title.split('attack ')[1].split(':')[0]}": t
                    for t in self.transfer})
        return {**out, **self.curves}


def write_report(preset: Preset, outcomes: Sequence[Any], *, configs: Mapping[str, Any], suite: Any,
                 output: Path, wall_s: float, invocations: Sequence[Mapping[str, Any]] = (),
                 seeds: int = 1) -> Written:
    """Write report.md, report.json and the PNG figures into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    paper = paper_numbers()
    data = collect(preset, outcomes, configs)
    series = {key: diag_series(data, name) for key, _, name, _ in DIAGNOSTICS}
    tables = report_tables(preset, data, paper, series)
    violations = {d.name: union_violations(d.summary) for d in data}
    remarks, facts = commentary(preset, data, paper)
    figures = _plot_figures(data, series, output)
    lines = _setup_lines(preset, data, outcomes, first=configs[data[0].name], suite=suite, wall_s=wall_s,
                         invocations=invocations, seeds=seeds)
    lines += _accuracy_lines(preset, tables, violations) + _submodel_lines(tables) + _figure_lines(tables)
    lines += ["## Cost (paper Tables 6 and 7)", ""] + tables.cost.markdown()
    lines += ["", "## Where we agree and differ with the paper", ""] + remarks + [""]
    report = {"preset": preset.name, "tables": {k: v.to_dict() for k, v in tables.by_key().items()},
              "invariants": violations, "facts": facts, "wall_s": wall_s, "invocations": list(invocations),
              "summaries": {d.name: {k: d.summary[k] for k in ("clean", "attacks", *UNION_ROWS) if k in d.summary}
                            for d in data},
              "figures": [p.name for p in figures]}
    write_atomic(output / "report.json", json.dumps(report, indent=1))
    write_atomic(output / "report.md", "\n".join(lines) + "\n")
    return Written(report=output / "report.md", figures=figures, data=report)


def report_tables(preset: Preset, data: list[MethodData], paper: dict,
                  series: Mapping[str, dict[str, list[tuple[int, float]]]]) -> ReportTables:
    return ReportTables(main=main_table(preset, data, paper), same_norm=same_norm_table(data),
                        submodel=submodel_tables(preset, data, paper), transfer=transfer_sections(data),
                        curves=curve_tables(data),
                        diagnostics={key: diag_table(series[key], title) for key, title, _, _ in DIAGNOSTICS},
                        cost=cost_table(preset, data, paper))


def _setup_lines(preset: Preset, data: list[MethodData], outcomes: Sequence[Any], *, first: Any, suite: Any,
                 wall_s: float, invocations: Sequence[Mapping[str, Any]], seeds: int) -> list[str]:
    """The title and what ran: command and seeds, data and model, radii against the paper's, machine, time."""
    paper_radii = preset.paper_radii()
    radii = ", ".join(f"{NORM_LABEL[n]} {preset.radii[n]:g}" for n in NORMS if n in preset.radii)
    pradii = ", ".join(f"{NORM_LABEL[n]} {paper_radii[n]:g}" for n in NORMS)
    trained = sum(o.training != "skipped" for o in outcomes)
    evaluated = sum(o.evaluation != "skipped" for o in outcomes)
    train_min = sum(float(r["epoch_time_s"]) for d in data for r in d.metrics if "epoch_time_s" in r) / 60
    eval_s = sum((d.summary.get("meta") or {}).get("wall_time_s", 0.0) for d in data)
    return [
        f"# Reproduction of the MAT paper: preset `{preset.name}`",
        "",
        f"{preset.description}.",
        "",
        (f"- Command: `matd reproduce --preset {preset.name} --seeds {seeds}`; {len(data)} methods, {seeds} seeds "
         f"each (run seeds 0..{seeds - 1}: initial weights, data order and attack noise differ); cells give the "
         f"mean and standard deviation over the seeds." if seeds > 1 else
         f"- Command: `matd reproduce --preset {preset.name}`; {len(data)} methods, one seed each (`--seeds N` "
         f"trains N), so the spread over seeds is not measured; every figure carries its 95% interval over "
         f"the test images."),
        f"- Data and model: {first.data.name.value}, {first.model.backbone}, K={first.attack.steps} training "
        f"attack steps, {first.train.epochs} epochs, batch {first.data.batch_size}; evaluation suite "
        f"`{suite.name}` on the first {data[0].summary['examples']} test images.",
        f"- Radii: ours ({radii}); the paper's ({pradii})"
        + (": the same." if preset.radii_match_paper() else ": **they differ**, so our numbers and the paper's "
           "are not comparable value for value."),
        f"- The paper's setting: {PAPER_SETUP[preset.paper_dataset]}. Ours: {preset.data_note}.",
        f"- Machine: {_machine()}; {_versions()}.",
        f"- Time: training {train_min:.1f} min in all (sum of epoch times), evaluation {eval_s:.0f} s in all; "
        f"the whole reproduction {sum(i['wall_s'] for i in invocations) or wall_s:.0f} s of wall time "
        f"over {max(1, len(invocations))} invocation(s); this one {wall_s:.0f} s ({trained} trainings and "
        f"{evaluated} evaluations run, the rest reused).",
        "",
    ]


def _accuracy_lines(preset: Preset, tables: ReportTables, violations: Mapping[str, list[str]]) -> list[str]:
    """Paper Tables 4/5 beside the published numbers, the union invariants, and Table 8 when it applies."""
    lines = ["## Robust accuracy (paper Tables 4 and 5)", "",
             "Per-example unions: *all_<norm>* counts an image robust only if every attack of that norm failed on "
             "it, *all_attacks* only if every attack failed. The *(paper)* columns are the published numbers "
             f"({MAIN_TABLE[preset.paper_dataset]}, {preset.paper_dataset}); '-' where the paper has no such row.",
             ""]
    lines += tables.main.markdown()
    bad = {n: v for n, v in violations.items() if v}
    lines += ["", "Union invariants (all_<norm> <= every attack of that norm, all_attacks <= every all_<norm>, "
              "every attack <= clean): " + ("hold for every method." if not bad else
                                            "VIOLATED: " + "; ".join(f"{n}: {', '.join(v)}" for n, v in bad.items()))]
    if tables.same_norm is not None:
        lines += ["", "## One norm for every sub-model (paper Table 8)", ""] + tables.same_norm.markdown()
    return lines


def _titled(table: Table) -> list[str]:
    return [f"**{table.title}**", ""] + table.markdown() + [""]


def _submodel_lines(tables: ReportTables) -> list[str]:
    """Paper Table 3 (each sub-model against its own attack) and the transfer tables (1, 2, 9-12)."""
    lines = ["", "## Sub-model robustness (paper Table 3)", ""]
    for t in tables.submodel:
        lines += _titled(t)
    if not tables.submodel:
        lines += ["No method with several sub-models, or the suite has no transfer attacks.", ""]
    lines += ["## Transferability between sub-models (paper Tables 1, 2 and 9-12)", "",
              "n_ij: examples that both models classify correctly, whose attack made on model i succeeds and also "
              "fools model j; r_ij = n_ij / n_ii. Low off-diagonal ratios mean the sub-models are diverse.", ""]
    for t in tables.transfer:
        lines += _titled(t)
    return lines


def _figure_lines(tables: ReportTables) -> list[str]:
    """Figures 2-3 (accuracy against steps and radius) and 1, 4 (diagnostics over training), each with its
    numbers."""
    lines = ["## Robust accuracy against attack steps and radius (paper Figures 2 and 3)", ""]
    for key, png in CURVE_FIGURES:
        if key in tables.curves:
            lines += [f"![{tables.curves[key].title}]({png})", ""] + tables.curves[key].markdown() + [""]
    lines += ["## Cross gradient and step disagreement over training (paper Figures 1 and 4)", "",
              "Measured once per epoch on the first batch, at that batch's adversarial inputs, for the methods "
              "trained with `train.diagnostics=true` (MAT and its variants; MSD-based methods have no "
              "single-norm step to compare). Figure 1: ||cross gradient||_2 / ||true gradient||_2 per sub-model. "
              "Figure 4: E_p, the share of coordinates whose sign differs (l_inf), one minus the overlap of the "
              "top-k sets (l_1), or one minus the cosine (l_2) between the ensemble-gradient step and the "
              "sub-model's own step.", ""]
    for key, title, _, png in DIAGNOSTICS:
        t = tables.diagnostics[key]
        if t is None:
            lines += [f"{title}: no diagnostics were logged.", ""]
        else:
            lines += [f"![{title}]({png})", ""] + t.markdown() + [""]
    return lines


def data_name(table: Table) -> str:
    return table.title.split(":")[0]


def flat_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Parent-run metrics: <method>/<clean | all_*> (fractions)."""
    out = {}
    for name, s in report["summaries"].items():
        for key in ("clean", *UNION_ROWS):
            if key in s:
                out[f"{name}/{key}"] = float(s[key])
    return out
