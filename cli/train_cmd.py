"""``matd train``: options -> config -> ``mat_dist.training.train`` (a Ray Train job, or with ``--cluster none``
the in-process loop with a progress bar)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from mat_dist.config import config_from_dict, load_config, apply_overrides, read_yaml
from mat_dist.console import plural
from mat_dist.training.run_folder import CONFIG_FILE, RunFolder


def resolve_run_config(config: str | None, output: Path | None, resume: bool, overrides: list[str]):
    """The config to run and its output folder; with --resume the run folder's config is the default."""
    from mat_dist.errors import UserError

    if config is None:
        if not (resume and output is not None):
            raise UserError("give --config FILE (or a shipped config name; see `matd configs`)")
        saved = RunFolder(output).config
        if not saved.is_file():
            raise UserError(f"--resume: {output} holds no run (no {CONFIG_FILE}); give --config to start one")
        return config_from_dict(apply_overrides(read_yaml(saved), overrides)), output
    cfg = load_config(config, overrides)
    return cfg, output or Path("runs") / cfg.name


def run_train(*, config: str | None, output: Path | None, resume: bool, tracking_uri: str | None,
              overrides: list[str], cluster: str | None = None) -> None:
    """``cluster``: a cluster file or shipped name; None: the embedded default (local Ray); "none": in-process."""
    from mat_dist.cluster.files import IN_PROCESS, load_cluster
    from mat_dist.training import train
    from mat_dist.training.ray_job import RayRunResult

    cluster_cfg = None if cluster == IN_PROCESS else load_cluster(cluster)  # a bad file fails before anything runs
    cfg, output = resolve_run_config(config, output, resume, overrides)
    typer.echo(f"training {cfg.name}: {cfg.method.name}, {cfg.model.backbone}, M={cfg.model.num_members}, "
               f"{plural(cfg.train.epochs, 'epoch')}{_where(cluster_cfg)} -> {output}")
    # The progress bar follows this process's batches: only the in-process loop has them (on Ray, rank 0
    # prints a line per epoch to this console).
    with _progress_bar(cfg) if cluster_cfg is None else contextlib.nullcontext({}) as callbacks:
        result = train(cfg, output, cluster_cfg, resume=resume, tracking_uri=tracking_uri, **callbacks)
    run = RunFolder(result.output)
    if not isinstance(result, RayRunResult):
        typer.echo(f"done: {run.model}; report {run.report}")
        return
    resumed_from = (result.worker_summary or {}).get("resumed_from")
    if resumed_from:
        typer.echo(f"resumed from the checkpoint of epoch {resumed_from}")
    typer.echo(f"done in {result.wall_s:.0f} s: {run.model}; report {run.report}; "
               f"Ray checkpoints {result.storage}/{result.ray_run_name}")


def _where(cluster) -> str:
    """Where the run trains, for the first line ('' in-process)."""
    if cluster is None:
        return ""
    w = cluster.workers
    width = f"{w.min}..{w.num}" if cluster.elastic else w.num
    where = "a local Ray runtime" if cluster.is_local else f"Ray cluster {cluster.address}"
    return (f" on {where}, {plural(width, 'worker')} x ({w.cpus:g} CPU, {w.gpus:g} GPU) "
            f"[{cluster.source}]")


@contextlib.contextmanager
def _progress_bar(cfg):
    """A bar over each epoch's batches and a line per epoch: the ``on_batch`` / ``on_epoch`` callbacks of ``train``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[last]}"), transient=False) as bar:
        task = bar.add_task("train", total=None, epoch=1, last="")
        state = {"epoch": 1}

        def on_batch(i: int, n: int) -> None:
            bar.update(task, completed=i, total=n, epoch=f"{state['epoch']}/{cfg.train.epochs}")

        def on_epoch(m: dict) -> None:
            state["epoch"] = int(m["epoch"]) + 1
            robust = " ".join(f"{k.split('_')[-1]} {100 * v:.1f}" for k, v in m.items() if k.startswith("val/robust_"))
            bar.console.print(f"epoch {int(m['epoch'])}: loss {m['train/loss']:.3f}  clean "
                              f"{100 * m['val/clean_acc']:.1f}%  {cfg.eval.attack.value.upper()} robust {robust}  ({m['epoch_time_s']:.0f} s)")

        yield {"on_batch": on_batch, "on_epoch": on_epoch}
