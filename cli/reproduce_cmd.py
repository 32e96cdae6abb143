"""``matd reproduce``: options -> preset -> train, evaluate and report every method; one line per step."""

from __future__ import annotations

from pathlib import Path

import typer

from mat_dist.plumbing.console import plural


def run_reproduce(*, preset: str | None, output: Path | None, cluster: str | None, workers: int | None,
                  report_dir: Path | None, tracking_uri: str | None, tracking: bool, list_presets: bool,
                  overrides: list[str], seeds: int | None = None, only: list[str] | None = None, close: bool = False,
                  provisional: bool = False) -> None:
    from mat_dist.reproduce.presets import PRESETS, get_preset

    if provisional and not close:
        from mat_dist.plumbing.errors import UserError

        raise UserError("--provisional draws a provisional close set: it goes with --close")
    if list_presets and not close:
        for p in PRESETS.values():
            typer.echo(f"{p.name:14s} {p.description} ({p.budget})")
        return
    the_preset = get_preset(preset)  # a bad name fails here, before anything is imported or written
    from mat_dist.cluster.files import IN_PROCESS
    from mat_dist.plumbing.errors import UserError

    if cluster == IN_PROCESS:  # as for train and evaluate: everything in this process, no Ray
        if workers:
            raise UserError(f"--cluster {IN_PROCESS} runs in this process; drop --workers {workers} (or the cluster)")
        cluster, workers = None, 0
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers} must be 0 (in this process) or more")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds} must be at least 1")
    if cluster is not None:
        from mat_dist.evaluate.evaluator import check_cluster

        check_cluster(cluster)  # a bad file or an address nobody answers at, before the first line
    from mat_dist.reproduce.pipeline import reproduce

    for name in only or ():
        the_preset.method(name)  # an unknown method is one line, before anything is written
    output = output or Path("runs") / f"reproduce-{the_preset.name}"
    if close:
        return _run_close(the_preset, output=output, cluster=cluster, workers=workers, report_dir=report_dir,
                          tracking_uri=tracking_uri, tracking=tracking, overrides=overrides, only=only,
                          list_only=list_presets, seeds=seeds, provisional=provisional)
    seeds = seeds or 1
    names = [m.name for m in the_preset.methods if not only or m.name in only
             or any(m.name in the_preset.sources(o) for o in only)]
    typer.echo(f"reproducing with preset {the_preset.name}: {plural(len(names), 'method')} x "
               f"{plural(seeds, 'seed')} "
               f"({', '.join(names)}) -> {output}"
               + (f" on cluster {cluster}" if cluster else ""))
    result = reproduce(the_preset, output=output, cluster=cluster, overrides=overrides, tracking=tracking,
                       tracking_uri=tracking_uri, workers=workers, report_dir=report_dir, log=typer.echo,
                       seeds=seeds, only=only)
    typer.echo(f"done in {result.wall_s:.0f} s: {result.report}"
               + (f"; MLflow parent run {result.parent_run_id}" if result.parent_run_id else ""))


def _run_close(preset, *, output: Path, cluster: str | None, workers: int | None, report_dir: Path | None,
               tracking_uri: str | None, tracking: bool, overrides: list[str], only: list[str] | None,
               list_only: bool, seeds: int | None, provisional: bool) -> None:
    """``--close``: the study's second stage; with ``--list`` the close set alone, one method a line on stdout
    (what a shell loop reads) and its unions on stderr."""
    from mat_dist.reproduce.close import close_set, reproduce_close, require_second_stage, seeds_now

    _, examples, close_seeds = require_second_stage(preset)  # one line for a preset without one, before anything
    seeds = seeds_now(preset, seeds)
    if list_only:
        found = close_set(preset, output, overrides=overrides, tracking=tracking, provisional=provisional)
        typer.echo(found.describe(), err=True)
        for name in found.members:
            typer.echo(name)
        return
    typer.echo(f"second stage of preset {preset.name}: the close set x {plural(seeds, 'seed')}"
               + (f" (of {close_seeds})" if seeds < close_seeds else "") + f" on {examples} images -> {output}")
    result = reproduce_close(preset, output=output, cluster=cluster, overrides=overrides, tracking=tracking,
                             tracking_uri=tracking_uri, workers=workers, report_dir=report_dir, log=typer.echo,
                             only=only, seeds=seeds, provisional=provisional)
    typer.echo(f"done in {result.wall_s:.0f} s: {result.report}"
               + (f"; MLflow parent run {result.parent_run_id}" if result.parent_run_id else ""))
