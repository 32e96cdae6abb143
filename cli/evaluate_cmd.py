"""``matd evaluate``: options -> model, data, suite -> sharded evaluation, with a progress bar over shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from mat_dist.errors import UserError


def _run_folder_of(path: Path) -> Path | None:
    """The run folder a weights file or checkpoint folder belongs to (it holds config.yaml), if any."""
    for folder in [path, *path.parents][:4]:
        if (folder / "config.yaml").is_file():
            return folder
    return None


def resolve_model(run: Path | None, checkpoint: Path | None) -> tuple[Path, Path | None]:
    """(model path, run folder or None) from exactly one of --run / --checkpoint."""
    if (run is None) == (checkpoint is None):
        raise UserError("give exactly one of --run DIR (a training run folder) or --checkpoint PATH")
    if run is not None:
        if not run.is_dir():
            raise UserError(f"--run {run} is not a folder; give a training run folder (it holds model.safetensors)")
        return run, run
    if not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint} does not exist; give a .safetensors file or a checkpoint folder")
    return checkpoint, _run_folder_of(checkpoint.resolve())


def resolve_data(data: str | None, data_root: str | None, run_folder: Path | None) -> tuple[str, str | None]:
    if data is not None:
        return data, data_root
    if run_folder is not None:
        from mat_dist.config import read_yaml

        raw = read_yaml(run_folder / "config.yaml") or {}
        section = raw.get("data") or {}
        return str(section.get("name", "mnist5k")), data_root or section.get("root")
    raise UserError("the checkpoint is not inside a run folder, so its dataset is unknown; pass --data NAME "
                    "(mnist5k, mnist, cifar10, digits)")


def parent_run_id(run_folder: Path | None) -> str | None:
    run_file = run_folder / "run.json" if run_folder is not None else None
    if run_file is None or not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text()).get("run_id")
    except (json.JSONDecodeError, AttributeError):
        return None


def run_evaluate(*, run: Path | None, checkpoint: Path | None, suite: str, examples: int | None,
                 cluster: str | None, workers: int | None, output: Path | None, data: str | None,
                 data_root: str | None, tracking_uri: str | None, tracking: bool, overrides: list[str]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mat_dist.evaluate.evaluator import TrackingOptions, evaluate
    from mat_dist.evaluate.suite import load_suite

    model_path, run_folder = resolve_model(run, checkpoint)
    the_suite = load_suite(suite, overrides)
    dataset, root = resolve_data(data, data_root, run_folder)
    if output is None:
        base = run_folder if run_folder is not None else model_path.resolve().parent
        output = base / f"eval-{the_suite.name}"
    n_workers = workers if workers is not None else len(os.sched_getaffinity(0))
    where = f"cluster {cluster}" if cluster else f"{n_workers} local Ray worker(s)" if n_workers else "this process"
    typer.echo(f"evaluating {model_path} with suite {the_suite.name} on {examples or the_suite.examples} "
               f"{dataset} test images, {where} -> {output}")
    options = TrackingOptions(enabled=tracking, uri=tracking_uri, parent_run_id=parent_run_id(run_folder))
    with Progress(TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[last]}")) as bar:
        task = bar.add_task("shards", total=None, last="")

        def on_progress(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, last=name)

        result = evaluate(model_path=model_path, suite=the_suite, output=output, dataset=dataset, data_root=root,
                          examples=examples, workers=n_workers, cluster=cluster, on_progress=on_progress,
                          tracking=options)
    typer.echo(summary_table(result.summary))
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    skipped = result.shards_total - result.shards_run
    # wall_time_s sums every call that ran shards: after a resume it is the whole evaluation's cost
    progress = (f"{result.shards_run} shards run, {skipped} already finished; {result.wall_time_s:.0f} s in all"
                if skipped else f"{result.shards_run} shards run in {result.wall_time_s:.0f} s")
    typer.echo(f"done ({progress}): {output / 'report.md'}"
               + (f"; MLflow run {result.tracking_run_id}" if result.tracking_run_id else ""))


def summary_table(summary: dict) -> str:
    rows = [("clean", summary["clean"])] + list(summary["attacks"].items()) \
        + [(k, v) for k, v in summary.items() if k.startswith("all_")]
    width = max(len(k) for k, _ in rows)
    lines = [f"robust accuracy on {summary['examples']} examples"]
    lines += [f"  {k:<{width}}  {100 * v:5.1f}%" for k, v in rows]
    return "\n".join(lines)
