"""Several models, one suite, one Ray runtime: each model's evaluation folder, and one leaderboard.

    OUT/<label>/          each model's evaluation (results.parquet, summary.json, report.md, shards/);
                          re-running resumes it, and a finished one is not attacked again
    OUT/leaderboard.md    models ranked by all_attacks, with 95% intervals, each model's paired difference to
                          the one ranked above it, and ties named
    OUT/leaderboard.parquet  one row per model: every figure with its interval bounds, the paired difference

Two models are a tie when the 95% interval of their paired all_attacks difference holds 0: both were
attacked on the same test images (mat_dist.evaluate.paired), so the difference is known far better than
either model's own interval, whose overlap would call ties that the images can separate. A model whose
per-image results cannot be read (or that shares no test image with the other) falls back to the overlap
of the two models' Wilson intervals. The table says so rather than letting the order speak for a difference
the images cannot show.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mat_dist.evaluate.metrics import separated
from mat_dist.evaluate.paired import PairedDifference, SeedUnions, paired_on_shared_images, read_seed_unions
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


Unions = dict[str, "SeedUnions | None"]  # label -> (example ids, all_attacks per image); None: unreadable


def per_image_unions(entries: list[Entry]) -> Unions:
    """Each model's per-image all_attacks from its results.parquet; None where unreadable (the Wilson fallback)."""
    return {e.source.label: read_seed_unions([e.output]) for e in entries}


def paired_to(a: Entry, b: Entry, unions: Unions) -> PairedDifference | None:
    """a's all_attacks minus b's on the test images both were attacked on, or None."""
    ua, ub = unions.get(a.source.label), unions.get(b.source.label)
    return None if ua is None or ub is None else paired_on_shared_images(ua, ub)


def ties(entry: Entry, others: list[Entry], unions: Unions | None = None) -> list[str]:
    """The models this one ties with: their paired all_attacks difference holds 0 in its 95% interval (or,
    without per-image results for both, their Wilson intervals overlap)."""
    mine = entry.summary["intervals"]["all_attacks"]
    out = []
    for o in others:
        if o is entry:
            continue
        d = paired_to(entry, o, unions or {})
        if (not d.separated) if d is not None else not separated(mine, o.summary["intervals"]["all_attacks"]):
            out.append(o.source.label)
    return out


def versus_above(order: list[Entry], unions: Unions) -> list[Any]:
    """Each model's paired difference to the model ranked just above it (None for the first, or unpaired)."""
    return [None] + [paired_to(below, above, unions) for above, below in zip(order, order[1:])]


def _cell(summary: dict[str, Any], metric: str) -> str:
    if metric not in summary:
        return "-"
    lo, hi = summary["intervals"][metric]
    return f"{100 * summary[metric]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def render_leaderboard(entries: list[Entry], *, suite: Suite, unions: Unions | None = None) -> str:
    order = ranked(entries)
    unions = per_image_unions(order) if unions is None else unions
    above = versus_above(order, unions)
    examples = sorted({e.summary["examples"] for e in order})
    lines = [f"# Leaderboard: suite `{suite.name}`", "",
             f"{len(order)} model{'s' if len(order) != 1 else ''}, "
             f"{' / '.join(map(str, examples))} test images each; radii "
             + ", ".join(f"{n.value} {e:g}" for n, e in suite.eps.items())
             + ". Ranked by *all attacks* (the per-example union over every attack of the suite). Cells: robust "
             "accuracy (%) [95% Wilson interval]. *vs above*: all attacks minus the model ranked just above, "
             "paired on the test images both were attacked on, in points [95%]. Two models are a tie when "
             "their paired difference's interval holds 0 (both are broken on mostly the same images, so "
             "their own intervals overlap far more often); their order is not a result.", "",
             "| rank | model | kind | " + " | ".join(FIGURES) + " | vs above | ties with |",
             "|---:|---|---|" + "---:|" * len(FIGURES) + "---:|---|"]
    for i, (e, d) in enumerate(zip(order, above), 1):
        kind = KIND_LABEL.get(e.source.kind, e.source.kind) + ("" if e.white_box else " (no white-box attacks)")
        lines.append(f"| {i} | {e.source.label} | {kind} | " + " | ".join(_cell(e.summary, m) for m in FIGURES)
                     + f" | {d.text() if d is not None else '-'} | {', '.join(ties(e, order, unions)) or '-'} |")
    unpaired = [e.source.label for e in order if unions.get(e.source.label) is None]
    if unpaired:
        lines += ["", f"No per-image results for {', '.join(unpaired)}: their ties are read from overlapping "
                      "Wilson intervals, which call ties that pairing could separate."]
    blind = [e.source.label for e in order if not e.white_box]
    if blind:
        lines += ["", f"No white-box attack could run on {', '.join(blind)} (no input gradients): their figures "
                      "are upper bounds from gradient-free attacks only, not comparable with the others'."]
    lines += ["", "Each model's report: " + ", ".join(f"[{e.source.label}]({e.source.label}/report.md)"
                                                     for e in order)]
    return "\n".join(lines) + "\n"


def table(entries: list[Entry], unions: Unions | None = None):
    import pyarrow as pa

    order = ranked(entries)
    unions = per_image_unions(order) if unions is None else unions
    above = versus_above(order, unions)
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
    columns["vs_above"] = [None if d is None else d.difference for d in above]
    columns["vs_above_lo"] = [None if d is None else d.interval[0] for d in above]
    columns["vs_above_hi"] = [None if d is None else d.interval[1] for d in above]
    columns["ties_with"] = [", ".join(ties(e, order, unions)) for e in order]
    return pa.table(columns)


def write_leaderboard(entries: list[Entry], output: Path, *, suite: Suite) -> None:
    import pyarrow.parquet as pq

    from mat_dist.plumbing.atomic import atomic_path, write_atomic

    output.mkdir(parents=True, exist_ok=True)
    unions = per_image_unions(entries)
    with atomic_path(output / LEADERBOARD_PARQUET, suffix=".tmp") as tmp:
        pq.write_table(table(entries, unions), tmp)
    write_atomic(output / LEADERBOARD_MD, render_leaderboard(entries, suite=suite, unions=unions))
