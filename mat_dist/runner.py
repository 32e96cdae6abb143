"""One training run on this machine: the output folder, resume, checkpoints, metrics and MLflow.

Output folder of a run:
    config.yaml        the resolved config (what ran, after overrides)
    metrics.jsonl      one JSON object per finished epoch, each epoch once
    run.json           the MLflow run id, so --resume logs into the same run
    checkpoints/       epoch-NNNN/ folders, the newest ``train.checkpoints_kept``
    model.safetensors  the final model (load with ``mat_dist.load_model``)
    report.md          the last epoch's figures

Order per epoch: metrics line, then checkpoint, then MLflow. A crash between
any two leaves a state that ``--resume`` repairs: metrics lines past the
checkpoint are dropped and re-run, MLflow gets the epochs it lacks.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

# write_atomic and the JSON-lines helpers live in mat_dist.atomic; imported here for the modules that have not moved
from mat_dist.atomic import append_jsonl as append_metrics, read_jsonl as read_metrics, write_atomic  # noqa: F401
from mat_dist.checkpoint import WEIGHTS, load_latest_checkpoint, save_checkpoint, save_weights
from mat_dist.config import RunConfig, config_from_dict, config_to_dict, config_to_yaml, read_yaml
from mat_dist.data import DataSplits, load_splits
from mat_dist.errors import UserError
from mat_dist.tracking import NullTracker, Tracker, check_store, git_commit, redact
from mat_dist.train import BatchCallback, Trainer, resolve_device, set_threads
from mat_dist.validation import describe_check

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
REPORT_FILE = "report.md"


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as err:
        raise UserError(f"output folder {folder} is not writable ({err.strerror}); choose another --output") from None


def prepare_output(cfg: RunConfig, output: Path, *, resume: bool) -> RunConfig:
    """Check the output folder against ``resume``; return the config the run will use."""
    check_writable(output)
    saved = output / CONFIG_FILE
    has_run = saved.is_file() or (output / "checkpoints").is_dir()
    if resume:
        if not saved.is_file():
            raise UserError(f"--resume: {output} holds no run (no {CONFIG_FILE}); drop --resume to start one")
        previous = config_from_dict(read_yaml(saved))
        if config_to_dict(previous) != config_to_dict(cfg):
            changed = _changed_keys(config_to_dict(previous), config_to_dict(cfg))
            raise UserError(f"--resume: the config differs from the run's in {output} ({', '.join(changed)}); "
                            f"resume with the same config, or start a new --output")
        return previous
    if has_run:
        raise UserError(f"{output} already holds a run; pass --resume to continue it or choose another --output")
    write_atomic(saved, config_to_yaml(cfg))
    return cfg


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _changed_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


@dataclass(frozen=True)
class RunResult:
    output: Path
    metrics: list[dict[str, Any]]
    tracking_run_id: str | None


def start_tracker(cfg: RunConfig, output: Path, tracking_uri: str | None) -> Tracker | NullTracker:
    if not cfg.tracking.enabled:
        return NullTracker()
    run_file = output / RUN_FILE
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
    tracker = Tracker.start(uri=tracking_uri or cfg.tracking.uri, experiment=cfg.tracking.experiment,
                            run_name=cfg.name, run_id=run_id, tags={"mat_dist.output": str(output.resolve())})
    tracker.local_record = str(output / METRICS_FILE)
    if run_id is None:
        write_atomic(run_file, json.dumps({"run_id": tracker.run_id}))
        tracker.log_params(config_to_dict(cfg))
        commit = git_commit(Path(__file__).parent)
        tracker.set_tags({"mat_dist.git_commit": commit or "unknown", "mat_dist.method": cfg.method.name})
        with tempfile.TemporaryDirectory(prefix="mat-dist-config-") as tmp:
            # The logged copy has secrets removed (a token in tracking.uri); the run folder keeps the original.
            copy = Path(tmp) / CONFIG_FILE
            copy.write_text(yaml.safe_dump(redact(config_to_dict(cfg)), sort_keys=False))
            tracker.log_artifact(copy)
    return tracker


def train_local(cfg: RunConfig, output: Path, *, resume: bool = False, tracking_uri: str | None = None,
                on_batch: BatchCallback | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None,
                splits: DataSplits | None = None) -> RunResult:
    """Train ``cfg`` in this process; ``output`` receives everything the module docstring lists."""
    check_writable(output)
    # Data before the run folder gets its config.yaml: a wrong data.root must not leave a "run" behind
    # that the corrected command then refuses ("already holds a run").
    splits = splits or load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size,
                                   seed=cfg.seed, limit_train=cfg.data.limit_train)
    if cfg.tracking.enabled:  # an unreachable store, too, before config.yaml is written
        check_store(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment)
    cfg = prepare_output(cfg, output, resume=resume)
    set_threads(cfg.train.threads)
    trainer = Trainer(cfg, splits, device=resolve_device(cfg.train.device))
    metrics_path = output / METRICS_FILE
    if resume:
        checkpoint = load_latest_checkpoint(output / "checkpoints", expect=trainer.spec)
        if checkpoint is not None:
            trainer.load_state(checkpoint.net, checkpoint.state)
        done = trainer.progress.epoch
        write_atomic(metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                           for r in read_metrics(metrics_path) if r["epoch"] <= done))
    tracker = start_tracker(cfg, output, tracking_uri)
    with tracker:
        _log_missing_epochs(tracker, read_metrics(metrics_path))

        def sink(metrics: dict[str, float], trainer: Trainer) -> None:
            append_metrics(metrics_path, metrics)
            save_checkpoint(output / "checkpoints", net=trainer.net, state=trainer.state_dict(),
                            keep=cfg.train.checkpoints_kept)
            tracker.log_metrics(metrics, step=int(metrics["epoch"]))
            if on_epoch is not None:
                on_epoch(metrics)

        trainer.fit(sink, on_batch)
        save_weights(trainer.final_net(), output / WEIGHTS)  # the best epoch's with eval.select=best
        rows = read_metrics(metrics_path)
        write_atomic(output / REPORT_FILE, epoch_report(cfg, rows))
        for name in (WEIGHTS, REPORT_FILE, METRICS_FILE):
            tracker.log_artifact(output / name)
    return RunResult(output=output, metrics=rows, tracking_run_id=tracker.run_id)


def _log_missing_epochs(tracker: Tracker | NullTracker, rows: list[dict[str, Any]]) -> None:
    """After a crash, give MLflow the finished epochs it has not recorded (each epoch once)."""
    logged = tracker.logged_steps("epoch")
    for row in rows:
        if int(row["epoch"]) not in logged:
            tracker.log_metrics(row, step=int(row["epoch"]))


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
