"""``matd evaluate``: options -> model, data, suite -> sharded evaluation, with a progress bar over shards.

What to evaluate (run folders, data set, output folders, the models file) is
``mat_dist.evaluate.selection``'s; this module parses the options, runs each
evaluation with a progress bar and prints.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mat_dist.plumbing.errors import UserError


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{option} {text!r}: give numbers separated by commas, one per channel") from None


def check_options(*, examples: int | None, workers: int | None, cluster: str | None) -> tuple[int | None, str | None]:
    """(workers, cluster) after the checks that need nothing loaded; ``--cluster none`` is ``--workers 0``."""
    from mat_dist.cluster.files import IN_PROCESS

    if examples is not None and examples < 1:
        raise UserError(f"--examples {examples} must be at least 1 (the first N test images; default: the suite's)")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers} must be 0 (in this process) or more")
    if cluster == IN_PROCESS:
        if workers:
            raise UserError(f"--cluster {IN_PROCESS} runs in this process; drop --workers {workers} (or the cluster)")
        return 0, None
    return workers, cluster


def run_evaluate(*, run: Path | None, checkpoint: Path | None, suite: str, examples: int | None,
                 cluster: str | None, workers: int | None, output: Path | None, data: str | None,
                 data_root: str | None, tracking_uri: str | None, tracking: bool, overrides: list[str],
                 models: list[str] | None = None, weights: Path | None = None, input_mean: str | None = None,
                 input_std: str | None = None) -> None:
    from mat_dist.evaluate.evaluator import check_cluster
    from mat_dist.evaluate.selection import check_choice, choose
    from mat_dist.evaluate.suite import load_suite

    models = list(models or [])
    mean, std = _floats(input_mean, "--input-mean"), _floats(input_std, "--input-std")
    check_choice(run=run, checkpoint=checkpoint, models=models, weights=weights, input_mean=mean, input_std=std)
    workers, cluster = check_options(examples=examples, workers=workers, cluster=cluster)
    the_suite = load_suite(suite, overrides)
    check_cluster(cluster)  # a bad file or an address nobody answers at: before any model or data is read
    n_workers = workers if workers is not None else len(os.sched_getaffinity(0))
    chosen = choose(suite_name=the_suite.name, run=run, checkpoint=checkpoint, models=models, weights=weights,
                    input_mean=mean, input_std=std, data=data, data_root=data_root, output=output)

    def one(target):
        return _evaluate_one(target, suite=the_suite, dataset=chosen.dataset, root=chosen.data_root,
                             examples=examples, cluster=cluster, workers=n_workers, tracking=tracking,
                             tracking_uri=tracking_uri)

    if chosen.leaderboard is None:
        one(chosen.targets[0])
        return
    from mat_dist.evaluate.leaderboard import LEADERBOARD_MD, evaluate_models, per_image_unions, ranked, versus_above

    entries = evaluate_models(list(chosen.targets), suite=the_suite, output=chosen.leaderboard, workers=n_workers,
                              cluster=cluster, evaluate_one=one)
    typer.echo("leaderboard (all_attacks, 95% interval; paired difference to the model above, a tie when it "
               "holds 0):")
    order = ranked(entries)
    for i, (e, d) in enumerate(zip(order, versus_above(order, per_image_unions(order))), 1):
        lo, hi = e.summary["intervals"]["all_attacks"]
        vs = f", vs above {d.text()}{'' if d.separated else ' (a tie)'}" if d is not None else ""
        typer.echo(f"  {i}. {e.source.label}: {100 * e.summary['all_attacks']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                   f"{vs}")
    typer.echo(f"done: {chosen.leaderboard / LEADERBOARD_MD}")


def _evaluate_one(target, *, suite, dataset: str, root: str | None, examples: int | None, cluster: str | None,
                  workers: int, tracking: bool, tracking_uri: str | None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mat_dist.data import check_data
    from mat_dist.evaluate.evaluator import TrackingOptions, evaluate

    check_data(dataset, root)  # a missing data folder: one line before the model is loaded
    where = f"cluster {cluster}" if cluster else f"{workers} local Ray worker{'s' if workers != 1 else ''}" \
        if workers else "this process"
    source, output = target.source, target.output
    options = TrackingOptions(enabled=tracking, uri=tracking_uri, parent_run_id=target.parent_run_id)
    # The banner and the bar come after every check (evaluate's on_start): a refused command prints one line.
    bar = Progress(TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[last]}"))
    task = bar.add_task("shards", total=None, last="")

    def on_start(n: int) -> None:
        typer.echo(f"evaluating {source.location} with suite {suite.name} on {n} {dataset} test images, "
                   f"{where} -> {output}")
        bar.start()

    def on_progress(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total, last=name)

    try:
        result = evaluate(model=source, suite=suite, output=output, dataset=dataset, data_root=root,
                          examples=examples, workers=workers, cluster=cluster, on_progress=on_progress,
                          tracking=options, on_start=on_start)
    finally:
        if bar.live.is_started:
            bar.stop()
    typer.echo(summary_table(result.summary))
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    skipped = result.shards_total - result.shards_run
    # wall_time_s sums every call that ran shards: after a resume it is the whole evaluation's cost
    progress = (f"{result.shards_run} shards run, {skipped} already finished; {result.wall_time_s:.0f} s in all"
                if skipped else f"{result.shards_run} shards run in {result.wall_time_s:.0f} s")
    typer.echo(f"done ({progress}): {output / 'report.md'}"
               + (f"; MLflow run {result.tracking_run_id}" if result.tracking_run_id else ""))
    return result


def summary_table(summary: dict) -> str:
    """The console's final table: every figure with its 95% Wilson interval (n images are few: say so)."""
    rows = [("clean", summary["clean"])] + list(summary["attacks"].items()) \
        + [(k, v) for k, v in summary.items() if k.startswith("all_")]
    intervals = summary.get("intervals", {})
    width = max(len(k) for k, _ in rows)
    lines = [f"robust accuracy on {summary['examples']} examples (95% interval)"]
    for key, value in rows:
        bounds = intervals.get(key)
        told = f"  [{100 * bounds[0]:5.1f}, {100 * bounds[1]:5.1f}]" if bounds is not None else ""
        lines.append(f"  {key:<{width}}  {100 * value:5.1f}%{told}")
    return "\n".join(lines)
