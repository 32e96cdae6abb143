"""What every training path records of a finished epoch, in one order; and the run's MLflow run.

``EpochRecorder`` is the sink ``Trainer.fit`` calls after each epoch, the same
on all three paths: the in-process loop, rank 0 of a Ray Train job, a Tune
trial. Per epoch, in this order:

1. the metrics line: the epoch's row joins the run's history and
   metrics.jsonl is rewritten from it atomically: each epoch once, never a
   cut line;
2. the checkpoint: into the run folder's checkpoints/ (the newest ``keep``),
   or into a temporary folder handed to ``publish``: a Ray Train rank and a
   Tune trial report it, and Ray copies it into its storage before the report
   returns;
3. the MLflow step: an epoch MLflow already holds is not logged again.

A crash between two steps leaves what resuming repairs: the lines past the
checkpoint are dropped (``run_folder.upto_checkpoint``) and those epochs run
again, and the resumed run's recorder first gives MLflow the recorded epochs
it lacks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from mat_dist.plumbing.atomic import jsonl_text, write_atomic
from mat_dist.core.checkpoint import save_checkpoint
from mat_dist.core.run_config import RunConfig, config_to_dict
from mat_dist.plumbing.tracking import NullTracker, Tracker, git_commit, redact
from mat_dist.core.run_folder import CONFIG_FILE, RunFolder
from mat_dist.core.trainer import Trainer

Row = dict[str, Any]


class EpochRecorder:
    """``Trainer.fit``'s sink: metrics line, checkpoint, MLflow step (the module docstring).

    ``history``: the lines of the epochs before this start (cut to the restored
    checkpoint). ``metrics``: the metrics.jsonl to keep (None: this process
    keeps none). Either ``checkpoints`` (a folder of kept checkpoints) or
    ``publish(row, folder)``. ``score(row)``: a row with more keys (a Tune
    trial's objective) that every step records. ``on_epoch(row)``: last.
    """

    def __init__(self, history: list[Row], *, metrics: Path | None, checkpoints: Path | None = None,
                 keep: int = 1, publish: Callable[[Row, Path], None] | None = None,
                 tracker: Tracker | NullTracker | None = None, score: Callable[[Row], Row] | None = None,
                 on_epoch: Callable[[Row], None] | None = None) -> None:
        if (checkpoints is None) == (publish is None):
            raise ValueError("an EpochRecorder keeps its checkpoints or publishes them: give checkpoints or publish")
        self.history = list(history)
        self.metrics, self.checkpoints, self.keep, self.publish = metrics, checkpoints, keep, publish
        self.tracker = tracker if tracker is not None else NullTracker()
        self.score, self.on_epoch = score, on_epoch
        self.logged = log_missing_epochs(self.tracker, self.history)  # epochs recorded before a crash

    def __call__(self, metrics: dict[str, float], trainer: Trainer) -> None:
        row = self.score(dict(metrics)) if self.score is not None else dict(metrics)
        self.history.append(row)
        if self.metrics is not None:
            write_atomic(self.metrics, jsonl_text(self.history))
        if self.checkpoints is not None:
            save_checkpoint(self.checkpoints, net=trainer.net, state=trainer.state_dict(), keep=self.keep)
        else:
            assert self.publish is not None
            with tempfile.TemporaryDirectory(prefix="mat-dist-ckpt-") as tmp:
                folder = save_checkpoint(Path(tmp), net=trainer.net, state=trainer.state_dict(), keep=1)
                self.publish(row, folder)
        self._log(row)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def _log(self, row: Row) -> None:
        step = int(row["epoch"])
        if step not in self.logged:
            self.tracker.log_metrics(row, step=step)
            self.logged.add(step)


def log_missing_epochs(tracker: Tracker | NullTracker, rows: list[Row]) -> set[int]:
    """Give MLflow the epochs of ``rows`` it has not recorded (each epoch once); the steps it now holds."""
    logged = tracker.logged_steps("epoch")
    for row in rows:
        if int(row["epoch"]) not in logged:
            tracker.log_metrics(row, step=int(row["epoch"]))
            logged.add(int(row["epoch"]))
    return logged


def start_tracker(cfg: RunConfig, run: RunFolder, tracking_uri: str | None) -> Tracker | NullTracker:
    """The run's MLflow run: the one named in run.json (a resumed run), else a new one, recorded there."""
    if not cfg.tracking.enabled:
        return NullTracker()
    run_id = json.loads(run.run_record.read_text())["run_id"] if run.run_record.is_file() else None
    tracker = Tracker.start(uri=tracking_uri or cfg.tracking.uri, experiment=cfg.tracking.experiment,
                            run_name=cfg.name, run_id=run_id, tags={"mat_dist.output": str(run.path.resolve())})
    tracker.local_record = str(run.metrics)
    if run_id is None:
        write_atomic(run.run_record, json.dumps({"run_id": tracker.run_id}))
        tracker.log_params(config_to_dict(cfg))
        commit = git_commit(Path(__file__).parent)
        tracker.set_tags({"mat_dist.git_commit": commit or "unknown", "mat_dist.method": cfg.method.name})
        with tempfile.TemporaryDirectory(prefix="mat-dist-config-") as tmp:
            # The logged copy has secrets removed (a token in tracking.uri); the run folder keeps the original.
            copy = Path(tmp) / CONFIG_FILE
            copy.write_text(yaml.safe_dump(redact(config_to_dict(cfg)), sort_keys=False))
            tracker.log_artifact(copy)
    return tracker
