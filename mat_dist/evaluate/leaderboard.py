"""Several models, one suite, one Ray runtime: each model's evaluation folder, and one leaderboard.

    OUT/<label>/          each model's evaluation (results.parquet, summary.json, report.md, shards/);
                          re-running resumes it, and a finished one is not attacked again
    OUT/leaderboard.md    models ranked by all_attacks, with 95% intervals and ties named
    OUT/leaderboard.parquet  one row per model: every figure with its interval bounds

Two models whose all_attacks intervals overlap are a tie: the table says so
rather than letting the order speak for a difference the images cannot show.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mat_dist.evaluate.metrics import separated
from mat_dist.evaluate.model_source import ModelSource
from mat_dist.evaluate.eval_report import KIND_LABEL
from mat_dist.evaluate.selection import Target, check_labels
from mat_dist.evaluate.suite import Suite
from mat_dist.core.threats import Norm

LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_PARQUET = "leaderboard.parquet"
FIGURES = ["clean", *(f"all_{n.value}" for n in Norm), "all_attacks"]


@dataclass(frozen=True)
class Entry:
    source: ModelSource
    summary: dict[str, Any]
    output: Path
    white_box: bool


def evaluate_models(targets: Sequence[Target], *, suite: Suite, output: Path, workers: int,
                    cluster: str | os.PathLike | None, evaluate_one: Callable[[Target], Any]) -> list[Entry]:
    """Evaluate every model in turn inside one Ray runtime (all their shards on one cluster); rank them.

    ``evaluate_one(target)`` runs one evaluation into ``target.output`` (the CLI passes one with its
    progress bar).
    """
    check_labels([t.source for t in targets])
    from mat_dist.evaluate.runner import ray_runtime

    entries = []
    with ray_runtime(workers=workers, cluster=cluster) if (workers or cluster) else nullcontext():
        for target in targets:
            result = evaluate_one(target)
            entries.append(Entry(source=target.source, summary=result.summary, output=result.output,
                                 white_box=target.source.differentiable))
    write_leaderboard(entries, output, suite=suite)
    return entries


def ranked(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (-e.summary["all_attacks"], e.source.label))


def ties(entry: Entry, others: list[Entry]) -> list[str]:
    """The models whose all_attacks interval overlaps this one's."""
    mine = entry.summary["intervals"]["all_attacks"]
    return [o.source.label for o in others
            if o is not entry and not separated(mine, o.summary["intervals"]["all_attacks"])]


def _cell(summary: dict[str, Any], metric: str) -> str:
    if metric not in summary:
        return "-"
    lo, hi = summary["intervals"][metric]
    return f"{100 * summary[metric]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def render_leaderboard(entries: list[Entry], *, suite: Suite) -> str:
    order = ranked(entries)
    examples = sorted({e.summary["examples"] for e in order})
    lines = [f"# Leaderboard: suite `{suite.name}`", "",
             f"{len(order)} model{'s' if len(order) != 1 else ''}, "
             f"{' / '.join(map(str, examples))} test images each; radii "
             + ", ".join(f"{n.value} {e:g}" for n, e in suite.eps.items())
             + ". Ranked by *all attacks* (the per-example union over every attack of the suite). Cells: robust "
             "accuracy (%) [95% Wilson interval]. Models whose all-attacks intervals overlap are a tie: "
             "their order is not a result.", "",
             "| rank | model | kind | " + " | ".join(FIGURES) + " | ties with |",
             "|---:|---|---|" + "---:|" * len(FIGURES) + "---|"]
    for i, e in enumerate(order, 1):
        kind = KIND_LABEL.get(e.source.kind, e.source.kind) + ("" if e.white_box else " (no white-box attacks)")
        lines.append(f"| {i} | {e.source.label} | {kind} | " + " | ".join(_cell(e.summary, m) for m in FIGURES)
                     + f" | {', '.join(ties(e, order)) or '-'} |")
    blind = [e.source.label for e in order if not e.white_box]
    if blind:
        lines += ["", f"No white-box attack could run on {', '.join(blind)} (no input gradients): their figures "
                      "are upper bounds from gradient-free attacks only, not comparable with the others'."]
    lines += ["", "Each model's report: " + ", ".join(f"[{e.source.label}]({e.source.label}/report.md)"
                                                     for e in order)]
    return "\n".join(lines) + "\n"


def table(entries: list[Entry]):
    import pyarrow as pa

    order = ranked(entries)
    columns: dict[str, list[Any]] = {"rank": list(range(1, len(order) + 1)),
                                     "model": [e.source.label for e in order],
                                     "kind": [e.source.kind for e in order],
                                     "location": [e.source.location for e in order],
                                     "white_box": [e.white_box for e in order],
                                     "examples": [e.summary["examples"] for e in order]}
    for metric in FIGURES:
        columns[metric] = [e.summary.get(metric) for e in order]
        columns[f"{metric}_lo"] = [e.summary["intervals"].get(metric, [None, None])[0] for e in order]
        columns[f"{metric}_hi"] = [e.summary["intervals"].get(metric, [None, None])[1] for e in order]
    columns["ties_with"] = [", ".join(ties(e, order)) for e in order]
    return pa.table(columns)


def write_leaderboard(entries: list[Entry], output: Path, *, suite: Suite) -> None:
    import pyarrow.parquet as pq

    from mat_dist.plumbing.atomic import atomic_path, write_atomic

    output.mkdir(parents=True, exist_ok=True)
    with atomic_path(output / LEADERBOARD_PARQUET, suffix=".tmp") as tmp:
        pq.write_table(table(entries), tmp)
    write_atomic(output / LEADERBOARD_MD, render_leaderboard(entries, suite=suite))
