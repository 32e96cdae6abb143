"""Training in this process, no Ray (``matd train --cluster none``, ``mat_dist.training.train(cfg, output)``).

The core loop (``mat_dist.core.trainer.Trainer``) behind the run folder
(``run_folder``): data and the MLflow store are checked before config.yaml
is written, ``--resume`` loads the newest whole checkpoint and cuts
metrics.jsonl back to it, each epoch goes through the ``EpochRecorder``, and
the final model and report.md close the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mat_dist.core.checkpoint import load_latest_checkpoint, save_weights
from mat_dist.core.run_config import RunConfig
from mat_dist.data import DataSplits, load_splits
from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.tracking import check_store
from mat_dist.core.init_from import check_init_source
from mat_dist.core.trainer import BatchCallback, Trainer, model_spec, resolve_device, set_threads
from mat_dist.training.recorder import EpochRecorder, start_tracker
from mat_dist.core.run_folder import RAY_RUN_FILE, RunFolder, RunResult, check_writable


def train_in_process(cfg: RunConfig, output: Path, *, resume: bool = False, tracking_uri: str | None = None,
                     on_batch: BatchCallback | None = None,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None,
                     splits: DataSplits | None = None) -> RunResult:
    """Train ``cfg`` in this process; ``output`` receives the run folder's layout."""
    run = RunFolder(output)
    if resume and run.ray_run.is_file():
        raise UserError(f"--resume: {output} is a Ray run ({RAY_RUN_FILE}); resume it with --cluster FILE "
                        f"(or no --cluster for the local default)")
    # Data before the run folder gets its config.yaml: a wrong data.root must not leave a "run" behind
    # that the corrected command then refuses ("already holds a run").
    splits = splits or load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size,
                                   seed=cfg.seed, limit_train=cfg.data.limit_train)
    check_init_source(cfg.train.init_from, model_spec(cfg, splits))  # a bad fine-tuning source, too
    if cfg.tracking.enabled:  # an unreachable store, too, before config.yaml is written
        check_store(tracking_uri or cfg.tracking.uri, cfg.tracking.experiment)
    check_writable(output)  # last of the checks: it creates the folder
    cfg = run.prepare(cfg, resume=resume)
    set_threads(cfg.train.threads)
    trainer = Trainer(cfg, splits, device=resolve_device(cfg.train.device))
    history: list[dict[str, Any]] = []
    if resume:
        checkpoint = load_latest_checkpoint(run.checkpoints, expect=trainer.spec)
        if checkpoint is not None:
            trainer.load_state(checkpoint.net, checkpoint.state)
        history = run.resume_metrics(trainer.progress.epoch)
    tracker = start_tracker(cfg, run, tracking_uri)
    with tracker:
        recorder = EpochRecorder(history, metrics=run.metrics, checkpoints=run.checkpoints,
                                 keep=cfg.train.checkpoints_kept, tracker=tracker, on_epoch=on_epoch)
        trainer.fit(recorder, on_batch)
        save_weights(trainer.final_net(), run.model)  # the best epoch's with eval.select=best
        run.write_report(cfg, recorder.history)
        for path in (run.model, run.report, run.metrics):
            tracker.log_artifact(path)
    return RunResult(output=output, metrics=recorder.history, tracking_run_id=tracker.run_id)
