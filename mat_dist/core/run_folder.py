"""The layout of a training run folder, and the rule that keeps it whole across crashes and resumes.

    config.yaml        the resolved config (what ran, after overrides); --resume compares with it
    metrics.jsonl      one JSON object per finished epoch, each epoch once, keys sorted
    run.json           the MLflow run id, so --resume logs into the same run
    ray_run.json       a Ray run's name and storage path (Ray runs only), so --resume finds its checkpoints
    checkpoints/       epoch-NNNN/ folders (``mat_dist.core.checkpoint``), the newest ``train.checkpoints_kept``
    model.safetensors  the final model (load with ``mat_dist.load_model``)
    report.md          the per-epoch figures (``epoch_report``)

Every training path leaves this layout: the in-process loop writes it as it
goes, a Ray run copies its last checkpoint into it at the end. A Tune trial's
folder keeps config.yaml and metrics.jsonl the same way.

The resume rule. An epoch's metrics line is written before its checkpoint
(``mat_dist.training.recorder``), so a crash can leave lines past the newest
checkpoint. A resumed run keeps the lines of the epochs its checkpoint holds
(``upto_checkpoint``) and trains the others again; a line cut by the crash
ends the file's readable part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mat_dist.plumbing.atomic import jsonl_text, probe_writable, read_jsonl, write_atomic
from mat_dist.core.checkpoint import CHECKPOINTS_DIR, WEIGHTS
from mat_dist.core.run_config import RunConfig, config_from_dict, config_to_dict, config_to_yaml, read_yaml
from mat_dist.plumbing.errors import UserError
from mat_dist.core.fast_path import FastPath
from mat_dist.plumbing.schema import differing_leaves
from mat_dist.core.epoch_check import describe_check

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
RAY_RUN_FILE = "ray_run.json"
REPORT_FILE = "report.md"
MODEL_FILE = WEIGHTS  # the final model has a checkpoint's weights file name


def upto_checkpoint(rows: list[dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
    """The resume rule: the metrics lines of the epochs a checkpoint of ``epoch`` holds (epochs 1..epoch)."""
    return [r for r in rows if int(r["epoch"]) <= epoch]


@dataclass(frozen=True)
class RunResult:
    """What a finished training run hands back (``mat_dist.training.train``)."""

    output: Path
    metrics: list[dict[str, Any]]  # metrics.jsonl's lines
    tracking_run_id: str | None


@dataclass(frozen=True)
class RunFolder:
    """A run folder's paths and the operations on them that every training path shares."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def run_record(self) -> Path:
        return self.path / RUN_FILE

    @property
    def ray_run(self) -> Path:
        return self.path / RAY_RUN_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    # ------------------------------------------------------------- metrics.jsonl

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.jsonl rewritten whole from ``rows``, atomically: never a cut line."""
        write_atomic(self.metrics, jsonl_text(rows))

    def resume_metrics(self, epoch: int) -> list[dict[str, Any]]:
        """The resume rule on metrics.jsonl: cut it back to the lines of epochs 1..``epoch`` (the restored
        checkpoint's) and return them."""
        rows = upto_checkpoint(self.read_metrics(), epoch)
        self.write_metrics(rows)
        return rows

    # ------------------------------------------------------------- the folder

    def holds_run(self) -> bool:
        return self.config.is_file() or self.checkpoints.is_dir()

    def prepare(self, cfg: RunConfig, *, resume: bool) -> RunConfig:
        """Check the folder against ``resume``; return the config the run will use (config.yaml's on resume)."""
        check_writable(self.path)
        if resume:
            if not self.config.is_file():
                raise UserError(f"--resume: {self.path} holds no run (no {CONFIG_FILE}); drop --resume to start one")
            previous = config_from_dict(read_yaml(self.config))
            if config_to_dict(previous) != config_to_dict(cfg):
                changed = [key for key, _, _ in differing_leaves(config_to_dict(previous), config_to_dict(cfg))]
                raise UserError(f"--resume: the config differs from the run's in {self.path} ({', '.join(changed)}); "
                                f"resume with the same config, or start a new --output")
            return previous
        if self.holds_run():
            raise UserError(f"{self.path} already holds a run; pass --resume to continue it or choose another --output")
        write_atomic(self.config, config_to_yaml(cfg))
        return cfg

    def write_report(self, cfg: RunConfig, rows: list[dict[str, Any]]) -> None:
        write_atomic(self.report, epoch_report(cfg, rows))


def check_writable(folder: Path) -> None:
    """UserError unless the run folder can be written; creates nothing (the folder appears with config.yaml)."""
    try:
        probe_writable(folder)
    except OSError as err:
        raise UserError(f"output folder {folder} is not writable ({err.strerror}); choose another --output") from None


def epoch_report(cfg: RunConfig, rows: list[dict[str, Any]]) -> str:
    """A markdown page with the final epoch's validation figures and the per-epoch curve."""
    if not rows:
        return f"# {cfg.name}\n\nNo finished epoch.\n"
    last = rows[-1]
    norms = [n.value for n in cfg.eval.eps]
    check = describe_check(cfg.eval.attack, cfg.eval.steps, cfg.eval.targets)
    short = cfg.eval.attack.value.upper()
    if "best_epoch" in last:
        which = "the last one" if int(last["best_epoch"]) == int(last["epoch"]) else "not the last one"
        selected = (f"model.safetensors holds the weights of epoch {int(last['best_epoch'])} ({which}), the best "
                    f"validation union ({100 * last['best/robust_all']:.1f}%; eval.select=best).")
    else:
        selected = "model.safetensors holds the last epoch's weights (eval.select=last)."
    lines = [
        f"# {cfg.name}: {cfg.method.name}, {cfg.model.backbone}, M={cfg.model.num_members}, {cfg.data.name.value}",
        "",
        *_fast_path_lines(cfg, rows),
        f"Per-epoch check on the first {cfg.eval.examples} validation images (held out of the training set), "
        f"deployed ensemble, {check} at radii "
        + ", ".join(f"{n.value} {e:g}" for n, e in cfg.eval.eps.items()) + ".",
        "",
        selected,
        "",
        "| epoch | time (s) | train loss | clean | " + " | ".join(f"{short} {n}" for n in norms) + " | all norms |",
        "|---:|---:|---:|---:|" + "---:|" * (len(norms) + 1),
    ]
    for r in rows:
        lines.append(f"| {r['epoch']} | {r['epoch_time_s']:.0f} | {r['train/loss']:.3f} | "
                     f"{100 * r['val/clean_acc']:.1f} | "
                     + " | ".join(f"{100 * r[f'val/robust_{n}']:.1f}" for n in norms)
                     + f" | {100 * r['val/robust_all']:.1f} |")
    members = [k for k in last if k.startswith("val/clean_acc_m")]
    lines += ["", "Sub-models, clean accuracy at the last epoch: "
              + ", ".join(f"m{k[-1]} {100 * last[k]:.1f}%" for k in sorted(members)), ""]
    return "\n".join(lines)


def _fast_path_lines(cfg: RunConfig, rows: list[dict[str, Any]]) -> list[str]:
    """What the training forwards ran with, from the metrics lines' ``fast_path/*`` (a run from before they were
    recorded has none: no line), beside the config's ask (``auto`` is decided per machine)."""
    used = {f for f in map(FastPath.from_record, rows) if f is not None}
    if not used:
        return []
    ran = " / ".join(sorted(f.describe() for f in used))
    if len(used) > 1:  # resumed on a machine that resolved auto otherwise
        ran += " (not the same in every epoch: fast_path/* in metrics.jsonl)"
    t = cfg.train
    asked = (f"train.precision={t.precision.value}, train.channels_last={str(t.channels_last).lower()}, "
             f"train.compile={str(t.compile).lower()}")
    return [f"Training forwards: {ran} ({asked}); the per-epoch check attacks the fp32 network.", ""]
