"""``matd train``: options -> config -> ``mat_dist.training.train`` (a Ray Train job, or with ``--cluster none``
the in-process loop with a progress bar)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from mat_dist.core.run_config import config_from_dict, load_config, apply_run_overrides, read_yaml
from mat_dist.plumbing.console import plural
from mat_dist.core.run_folder import CONFIG_FILE, RunFolder


def resolve_run_config(config: str | None, output: Path | None, resume: bool, overrides: list[str]):
    """The config to run and its output folder; with --resume the run folder's config is the default."""
    from mat_dist.plumbing.errors import UserError

    if config is None and not resume:
        raise UserError("give --config FILE (or a shipped config name; see `matd configs`)")
    if config is None and output is None:
        raise UserError("--resume needs --output DIR, the run folder to continue")
    cfg = load_config(config, overrides) if config is not None else None
    output = output or Path("runs") / cfg.name
    saved = RunFolder(output).config
    if resume and not saved.is_file():
        # The same advice with or without --config: there is nothing to resume, so start the run.
        start = "drop --resume" + (" and give --config FILE" if config is None else "")
        raise UserError(f"--resume: {output} holds no run (no {CONFIG_FILE}); to start one there, {start}")
    if cfg is None:
        cfg = config_from_dict(apply_run_overrides(read_yaml(saved), overrides), source=str(saved), overrides=overrides)
    return cfg, output


def check_before_start(cfg, output: Path, resume: bool, cluster_cfg, tracking_uri: str | None = None):
    """What would stop the run, found before the first line is printed and before any folder is made: the
    output folder, the cluster's address, the data where this machine reads it, and last (it creates the
    experiment) the MLflow store. Returns the data splits of an in-process run (read here once, not again by
    the loop)."""
    from mat_dist.cluster.runtime import check_reachable
    from mat_dist.data import load_splits
    from mat_dist.plumbing.errors import UserError
    from mat_dist.core.init_from import check_init_source
    from mat_dist.plumbing.tracking import check_store
    from mat_dist.core.trainer import model_spec
    from mat_dist.training.ray_job import check_job
    from mat_dist.core.run_folder import check_writable

    run = RunFolder(output)
    if not resume and run.holds_run():
        raise UserError(f"{output} already holds a run; pass --resume to continue it or choose another --output")
    check_writable(output)
    splits = None
    if cluster_cfg is None:
        splits = load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
                             limit_train=cfg.data.limit_train)
        check_init_source(cfg.train.init_from, model_spec(cfg, splits))  # the fine-tuning source (train.init_from)
    else:
        check_reachable(cluster_cfg)
        # Batch x workers and the device; on a local runtime also the data, read here as the workers will (the
        # Ray driver checks again: a second read of the data, against a run of minutes).
        check_job(cfg, cluster_cfg)
    if cfg.tracking.enabled:
        check_store(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment)
    return splits


def run_train(*, config: str | None, output: Path | None, resume: bool, tracking_uri: str | None,
              overrides: list[str], cluster: str | None = None) -> None:
    """``cluster``: a cluster file or shipped name; None: the embedded default (local Ray); "none": in-process."""
    from mat_dist.cluster.files import IN_PROCESS, load_cluster
    from mat_dist.training import train
    from mat_dist.training.ray_job import RayRunResult

    cluster_cfg = None if cluster == IN_PROCESS else load_cluster(cluster)  # a bad file fails before anything runs
    cfg, output = resolve_run_config(config, output, resume, overrides)
    splits = check_before_start(cfg, output, resume, cluster_cfg, tracking_uri)
    typer.echo(f"training {cfg.name}: {cfg.method.name}, {cfg.model.backbone}, M={cfg.model.num_members}, "
               f"{plural(cfg.train.epochs, 'epoch')}{_where(cluster_cfg)} -> {output}")
    # The progress bar follows this process's batches: only the in-process loop has them (on Ray, rank 0
    # prints a line per epoch to this console).
    with _progress_bar(cfg) if cluster_cfg is None else contextlib.nullcontext({}) as callbacks:
        result = train(cfg, output, cluster_cfg, resume=resume, tracking_uri=tracking_uri, splits=splits,
                       **callbacks)
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

    # Started at the first batch, not before: a run refused while it loads its data shows no bar.
    bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[last]}"), transient=False)
    task = bar.add_task("train", total=None, epoch=1, last="")
    state = {"epoch": 1, "started": False}
    try:
        def on_batch(i: int, n: int) -> None:
            if not state["started"]:
                bar.start()
                state["started"] = True
            bar.update(task, completed=i, total=n, epoch=f"{state['epoch']}/{cfg.train.epochs}")

        def on_epoch(m: dict) -> None:
            state["epoch"] = int(m["epoch"]) + 1
            robust = " ".join(f"{k.split('_')[-1]} {100 * v:.1f}" for k, v in m.items() if k.startswith("val/robust_"))
            bar.console.print(f"epoch {int(m['epoch'])}: loss {m['train/loss']:.3f}  clean "
                              f"{100 * m['val/clean_acc']:.1f}%  {cfg.eval.attack.value.upper()} robust {robust}  ({m['epoch_time_s']:.0f} s)")

        yield {"on_batch": on_batch, "on_epoch": on_epoch}
    finally:
        if state["started"]:
            bar.stop()
