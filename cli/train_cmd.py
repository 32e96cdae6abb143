"""``matd train``: options -> config -> local run, with a progress bar."""

from __future__ import annotations

from pathlib import Path

import typer

from mat_dist.config import config_from_dict, load_config, apply_overrides, read_yaml


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
              overrides: list[str]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mat_dist.runner import train_local

    cfg, output = resolve_run_config(config, output, resume, overrides)
    typer.echo(f"training {cfg.name}: {cfg.method.name}, {cfg.model.backbone}, M={cfg.model.num_members}, "
               f"{cfg.train.epochs} epochs -> {output}")
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
                              f"{100 * m['val/clean_acc']:.1f}%  PGD robust {robust}  ({m['epoch_time_s']:.0f} s)")

        result = train_local(cfg, output, resume=resume, tracking_uri=tracking_uri,
                             on_batch=on_batch, on_epoch=on_epoch)
    typer.echo(f"done: {result.output / 'model.safetensors'}; report {result.output / 'report.md'}")
