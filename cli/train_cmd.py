"""``matd train``: options -> config -> a Ray Train job (``--cluster``), or the in-process loop with a progress bar."""

from __future__ import annotations

from pathlib import Path

import typer

from mat_dist.config import config_from_dict, load_config, apply_overrides, read_yaml
from mat_dist.console import plural


def resolve_run_config(config: str | None, output: Path | None, resume: bool, overrides: list[str]):
    """The config to run and its output folder; with --resume the run folder's config is the default."""
    from mat_dist.errors import UserError
    from mat_dist.runner import CONFIG_FILE

    if config is None:
        if not (resume and output is not None):
            raise UserError("give --config FILE (or a shipped config name; see `matd configs`)")
        saved = output / CONFIG_FILE
        if not saved.is_file():
            raise UserError(f"--resume: {output} holds no run (no {CONFIG_FILE}); give --config to start one")
        return config_from_dict(apply_overrides(read_yaml(saved), overrides)), output
    cfg = load_config(config, overrides)
    return cfg, output or Path("runs") / cfg.name


def run_train(*, config: str | None, output: Path | None, resume: bool, tracking_uri: str | None,
              overrides: list[str], cluster: str | None = None) -> None:
    """``cluster``: a cluster file or shipped name; None: the embedded default (local Ray); "none": in-process."""
    from mat_dist.cluster.files import IN_PROCESS, load_cluster

    cluster_cfg = None if cluster == IN_PROCESS else load_cluster(cluster)  # a bad file fails before anything runs
    cfg, output = resolve_run_config(config, output, resume, overrides)
    if cluster_cfg is not None:
        _run_on_ray(cfg, output, cluster_cfg, resume=resume, tracking_uri=tracking_uri)
    else:
        _run_in_process(cfg, output, resume=resume, tracking_uri=tracking_uri)


def _run_on_ray(cfg, output: Path, cluster, *, resume: bool, tracking_uri: str | None) -> None:
    from mat_dist.distributed.job import train_ray

    w = cluster.workers
    width = f"{w.min}..{w.num}" if cluster.elastic else w.num
    where = "a local Ray runtime" if cluster.is_local else f"Ray cluster {cluster.address}"
    typer.echo(f"training {cfg.name}: {cfg.method.name}, {cfg.model.backbone}, M={cfg.model.num_members}, "
               f"{plural(cfg.train.epochs, 'epoch')} on {where}, {plural(width, 'worker')} x ({w.cpus:g} CPU, "
               f"{w.gpus:g} GPU) [{cluster.source}] -> {output}")
    result = train_ray(cfg, output, cluster, resume=resume, tracking_uri=tracking_uri)
    summary = result.worker_summary or {}
    if summary.get("resumed_from"):
        typer.echo(f"resumed from the checkpoint of epoch {summary['resumed_from']}")
    typer.echo(f"done in {result.wall_s:.0f} s: {result.output / 'model.safetensors'}; "
               f"report {result.output / 'report.md'}; Ray checkpoints {result.storage}/{result.ray_run_name}")


def _run_in_process(cfg, output: Path, *, resume: bool, tracking_uri: str | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mat_dist.distributed.job import RAY_RUN_FILE
    from mat_dist.errors import UserError
    from mat_dist.runner import train_local

    if resume and (output / RAY_RUN_FILE).is_file():
        raise UserError(f"--resume: {output} is a Ray run ({RAY_RUN_FILE}); resume it with --cluster FILE "
                        f"(or no --cluster for the local default)")
    typer.echo(f"training {cfg.name}: {cfg.method.name}, {cfg.model.backbone}, M={cfg.model.num_members}, "
               f"{plural(cfg.train.epochs, 'epoch')} -> {output}")
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

        result = train_local(cfg, output, resume=resume, tracking_uri=tracking_uri,
                             on_batch=on_batch, on_epoch=on_epoch)
    typer.echo(f"done: {result.output / 'model.safetensors'}; report {result.output / 'report.md'}")
