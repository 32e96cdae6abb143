"""report.md: the summary in the shape of the paper's Table 4, transferability, sub-models, curves, warnings."""

from __future__ import annotations

import csv
import platform
from pathlib import Path
from typing import Any

from mat_dist.plumbing.paths import as_given
from mat_dist.core.threats import Norm

PAPER_TABLES = Path(__file__).resolve().parent.parent / "reference" / "paper_tables.csv"
NORM_LABEL = {Norm.LINF.value: "l_inf", Norm.L2.value: "l_2", Norm.L1.value: "l_1"}
PAPER_EPS = {"mnist": "(0.3, 2.0, 10)", "cifar10": "(0.03, 0.5, 12)"}
# The radii of the paper's tables (appendix C): its numbers compare only with figures at these radii.
PAPER_RADII = {"mnist": {"linf": 0.3, "l2": 2.0, "l1": 10.0}, "cifar10": {"linf": 0.03, "l2": 0.5, "l1": 12.0}}
PAPER_TABLE = {"mnist": "MAT paper Table 4", "cifar10": "MAT paper Table 5"}


def paper_values(dataset: str, method: str = "mat") -> dict[str, float]:
    """Published numbers of ``method`` (percent) keyed by metric, for the paper's dataset of that name."""
    key = {"mnist5k": "mnist"}.get(dataset, dataset)
    if key not in PAPER_TABLE or not PAPER_TABLES.is_file():
        return {}
    with PAPER_TABLES.open() as f:
        return {r["metric"]: float(r["value"]) for r in csv.DictReader(f)
                if r["source"] == PAPER_TABLE[key] and r["dataset"] == key and r["method"] == method}


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _interval(summary: dict[str, Any], metric: str) -> str:
    """'[84.8, 89.0]': the 95% interval of a summary's figure, in percent ('' when the summary has none)."""
    bounds = summary.get("intervals", {}).get(metric)
    return "" if bounds is None else f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


KIND_LABEL = {"torchscript": "TorchScript file", "export": "torch.export program", "factory": "Python factory",
              "onnx": "ONNX file, run by onnxruntime", "module": "Python module object",
              "checkpoint": "mat-dist checkpoint"}

# How the paper's tables name each training method (paper_tables.csv's ``method`` column).
PAPER_METHOD_LABEL = {"mat": "MAT", "standard": "standard training", "at_linf": "AT l_inf", "at_l2": "AT l_2",
                      "at_l1": "AT l_1", "ensemble_at": "ensemble AT", "msd": "MSD"}


def table4(summary: dict[str, Any], attack_info: dict[str, dict[str, Any]], paper: dict[str, float],
           paper_label: str = "MAT") -> list[str]:
    head = "| attack | radius | robust accuracy (%) | 95% interval |" + (f" paper {paper_label} (%) |" if paper else "")
    rule = "|---|---:|---:|---:|" + ("---:|" if paper else "")
    lines = [head, rule]

    def row(label: str, radius: str, value: float, metric: str, interval_key: str | None = None) -> None:
        extra = f" {paper[metric]:.1f} |" if paper and metric in paper else (" |" if paper else "")
        lines.append(f"| {label} | {radius} | {_pct(value)} | {_interval(summary, interval_key or metric)} |{extra}")

    row("Clean", "", summary["clean"], "clean")
    for norm in Norm:
        names = [a for a, i in attack_info.items() if i["norm"] == norm.value]
        if not names:
            continue
        for a in names:
            row(f"{a} ({attack_info[a]['attack']})", f"{attack_info[a]['eps']:g}", summary["attacks"][a], a)
        row(f"**All {NORM_LABEL[norm.value]} attacks**", "", summary[f"all_{norm.value}"], f"all_{norm.value}")
    row("**All attacks**", "", summary["all_attacks"], "all_attacks")
    return lines


def strength_lines(attack_info: dict[str, dict[str, Any]]) -> list[str]:
    """Per norm: does the suite run full-strength AutoAttack (APGD-CE + APGD-T, 100 iterations, 9 targets)?
    One line per norm; why it matters, once, after them."""
    lines, weak = [], []
    for norm in Norm:
        names = [a for a, i in attack_info.items() if i["norm"] == norm.value]
        if not names:
            continue
        full = [a for a in names if attack_info[a].get("full_strength_autoattack")]
        if full:
            lines.append(f"- {NORM_LABEL[norm.value]}: full-strength AutoAttack ({', '.join(full)}) on every image.")
        else:
            weak.append(NORM_LABEL[norm.value])
            lines.append(f"- {NORM_LABEL[norm.value]}: **no full-strength AutoAttack**; *All {NORM_LABEL[norm.value]} "
                         f"attacks* is an upper bound.")
    if weak:
        lines += ["", f"Why it matters ({', '.join(weak)}): at the field's radii PGD alone overstated robustness by "
                      f"up to 44 points and a light APGD (20 iterations, 3 targets) by 3.6 points on MNIST-5k models; "
                      f"the `field` suite runs the full strength."]
    return lines


def paper_radii_differ(dataset: str, attack_info: dict[str, dict[str, Any]]) -> list[str]:
    """The attacks whose radius is not the paper's for their norm ('pgd_linf at 0.1, the paper's 0.3')."""
    radii = PAPER_RADII.get({"mnist5k": "mnist"}.get(dataset, dataset), {})
    return [f"{a} at {i['eps']:g} (the paper's {radii[i['norm']]:g})" for a, i in attack_info.items()
            if i["norm"] in radii and abs(i["eps"] - radii[i["norm"]]) > 1e-9 * max(1.0, radii[i["norm"]])]


def shown_location(location: str) -> str:
    """A model's location as a report names it: relative to the folder the command ran in when it lies under
    it, else as given (``paths.as_given``); a factory keeps its function, an in-memory module its name."""
    path, sep, function = location, "", ""
    head, colon, tail = location.rpartition(":")
    if colon and head.endswith(".py") and tail.isidentifier():  # path/to/file.py:function
        path, sep, function = head, colon, tail
    return f"{as_given(path)}{sep}{function}"


def transfer_lines(transfer: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for attack, t in transfer.items():
        models = t["models"]
        lines += ["", f"Attack `{attack}`: rows = model the adversarial examples were generated on, "
                      f"columns = model they are scored on; n_ij (r_ij).", "",
                  "| from \\ on | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
        for i, s in enumerate(models):
            cells = [f"{t['counts'][i][j]} ({t['ratios'][i][j]:.2f})" if t["ratios"][i][j] == t["ratios"][i][j]
                     else f"{t['counts'][i][j]} (-)" for j in range(len(models))]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines += ["", "Robust accuracy of each model against the attack generated on itself (paper Table 3): "
                  + ", ".join(f"{m} {_pct(v)}%" for m, v in t["robustness"].items())]
    return lines


def render(*, summary: dict[str, Any], attack_info: dict[str, dict[str, Any]], meta: dict[str, Any],
           transfer: dict[str, Any], curves: list[dict[str, Any]], warnings: list[str]) -> str:
    foreign = meta.get("num_members") is None  # a model mat-dist did not train
    method = meta.get("trained_as") or "mat"  # the paper row beside the model; bare weights: MAT
    label = PAPER_METHOD_LABEL.get(method, method)
    paper = {} if foreign else paper_values(meta.get("dataset", ""), method)
    other_radii = paper_radii_differ(meta.get("dataset", ""), attack_info) if paper else []
    if other_radii:
        paper = {}  # the paper's figures are at its radii: beside figures at others they would mislead
    model_line = (f"model `{meta.get('label')}` ({KIND_LABEL.get(meta.get('model_kind'), meta.get('model_kind'))}, "
                  f"not trained by mat-dist)." if foreign else
                  f"deployed ensemble (image copied to all {meta['num_members']} heads, {meta['ensemble_output']}).")
    lines = [
        f"# Evaluation: suite `{meta['suite']}` on `{meta['model']}`",
        "",
        f"{summary['examples']} {meta['dataset']} test images (the first {summary['examples']}), {model_line} "
        f"Wall time {meta['wall_time_s']:.0f} s {_where(meta['workers'])} on {meta['machine']}; "
        f"torch {meta['versions']['torch']}, foolbox {meta['versions']['foolbox']}, "
        f"pyautoattack {meta['versions']['pyautoattack']}, ray {meta['versions']['ray']}. "
        + ("One run." if meta.get("calls", 1) <= 1 else f"{meta['calls']} calls (resumed); the wall time is their sum."),
        "",
        "Every adversarial example passed the gate (prediction flipped, ||delta||_p <= eps, inside [0, 1]); "
        "clean-misclassified images count as not robust. *All l_p attacks* is the per-example union of the "
        "norm's attacks, *All attacks* the union over all. Intervals are 95% Wilson intervals over the "
        f"{summary['examples']} images (a union's from its own per-example results). Each interval is one "
        "figure's uncertainty: two figures of this model rest on the same images, so overlapping intervals do "
        "not make them a tie (compare them image by image in results.parquet); `matd evaluate` with several "
        "models pairs models on the images they share.",
        "",
    ]
    lines += table4(summary, attack_info, paper, label)
    if other_radii:
        lines += ["", f"No paper column: the paper's figures ({label}) are at radii "
                      f"{PAPER_EPS[{'mnist5k': 'mnist'}.get(meta['dataset'], meta['dataset'])]}, and this suite "
                      f"attacks at others ({', '.join(other_radii)})."]
    if paper:
        key = {"mnist5k": "mnist"}.get(meta["dataset"], meta["dataset"])
        lines += ["", f"Paper column: {label} in the paper ({PAPER_TABLE[key]}, ResNet-18, radii {PAPER_EPS[key]}, "
                      "first 1000 test images): comparable only where the radii and the model agree."]
    lines += ["", "## Strength of this suite", ""]
    if not meta.get("white_box", True):
        dropped = ", ".join(meta.get("dropped_attacks") or []) or "none"
        lines += ["- **White-box attacks were not possible**: this model has no input gradients (an ONNX file), "
                  f"so only the suite's gradient-free attacks ran (dropped: {dropped}). Every figure is an upper "
                  "bound on the robust accuracy a white-box attack would find.", ""]
    lines += strength_lines(attack_info)
    if transfer:
        lines += ["", "## Transferability between sub-models (paper Tables 1, 2, 9-12)"]
        lines += transfer_lines(transfer)
    if curves:
        lines += ["", "## Curves (paper Figures 2 and 3)", "", "See `curves.csv` and `curves.png`.", "",
                  "| curve | attack | x | robust accuracy (%) |", "|---|---|---:|---:|"]
        lines += [f"| {p['curve']} | {p['attack']} | {p['x']:g} | {_pct(p['robust_accuracy'])} |" for p in curves]
    lines += ["", "## Sanity checks", ""]
    lines += [f"- WARNING: {w}" for w in warnings] or ["- no sign of gradient masking found (gradients, black-box "
                                                       "against white-box attacks, curves)"]
    return "\n".join(lines) + "\n"


def _where(workers: int) -> str:
    return "in one process" if not workers else f"with {workers} Ray worker{'s' if workers != 1 else ''}"


def machine() -> str:
    import os

    return f"{platform.machine()} {platform.system()}, {len(os.sched_getaffinity(0))} CPU cores"
