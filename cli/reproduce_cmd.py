"""``matd reproduce``: options -> preset -> train, evaluate and report every method; one line per step."""

from __future__ import annotations

from pathlib import Path

import typer

from mat_dist.plumbing.console import plural


def run_reproduce(*, preset: str | None, output: Path | None, cluster: str | None, workers: int | None,
                  report_dir: Path | None, tracking_uri: str | None, tracking: bool, list_presets: bool,
                  overrides: list[str], seeds: int = 1, only: list[str] | None = None) -> None:
    from mat_dist.reproduce.presets import PRESETS, get_preset

    if list_presets:
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
    if seeds < 1:
        raise UserError(f"--seeds {seeds} must be at least 1")
    if cluster is not None:
        from mat_dist.evaluate.evaluator import check_cluster

        check_cluster(cluster)  # a bad file or an address nobody answers at, before the first line
    from mat_dist.reproduce.pipeline import reproduce

    for name in only or ():
        the_preset.method(name)  # an unknown method is one line, before anything is written
    output = output or Path("runs") / f"reproduce-{the_preset.name}"
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
