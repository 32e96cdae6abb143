"""MLflow for a sweep, from the driver: one nested run per trial, fed by a Ray Tune callback.

The sweep's parent run is created by the driver before any trial starts. Each
trial's run is created here, in the driver too, when Tune starts the trial
(tag ``mlflow.parentRunId``), and gets the trial's config and sampled values
as params and every reported epoch as metrics at step = epoch. Logging from
the driver rather than from the trials keeps one process writing the store
(a sqlite store does not like several), and works for trials on other nodes.

The trial -> run id map is kept in ``<sweep>/trial_runs.json`` so a resumed
sweep logs into the same runs; an epoch already logged is not logged again.
The callback holds only plain data, so Tune can pickle it into the experiment
state and ``Tuner.restore`` brings it back. For the fidelity step's re-runs
(``sources``: sweep trial id -> its searched values) a run is named after the
sweep trial it re-trains and gets that trial's values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRIAL_RUNS_FILE = "trial_runs.json"
# Tune's own bookkeeping in every result: not metrics of the model.
_TUNE_KEYS = {"done", "pid", "timestamp", "training_iteration", "iterations_since_restore", "time_since_restore",
              "time_this_iter_s", "checkpoint_dir_name", "should_checkpoint", "node_ip", "hostname", "date",
              "trial_id", "config", "experiment_tag", "checkpoint_path"}


class TrialTrackingHooks:
    """The callback's hooks as plain Python; ``TrialTracking`` is them as a Ray Tune ``Callback`` (see below)."""

    def __init__(self, *, uri: str, experiment: str, parent_run_id: str, sweep_dir: str, base_raw: dict,
                 run_prefix: str, sources: dict[str, dict] | None = None) -> None:
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self.sweep_dir, self.base_raw, self.run_prefix = sweep_dir, base_raw, run_prefix
        self.sources = sources
        self._trackers: dict[str, Any] = {}
        self._logged: dict[str, set[int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_trackers"], state["_logged"] = {}, {}
        return state

    # ------------------------------------------------------------ runs

    def _run_ids(self) -> dict[str, str]:
        path = Path(self.sweep_dir) / TRIAL_RUNS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _tracker(self, trial: Any) -> Any:
        from mat_dist.core.run_config import config_to_dict
        from mat_dist.plumbing.atomic import write_atomic
        from mat_dist.plumbing.tracking import Tracker
        from mat_dist.tune.objective import SCHEDULE, SOURCE
        from mat_dist.tune.space import trial_config

        tid = trial.trial_id
        if tid in self._trackers:
            return self._trackers[tid]
        ids = self._run_ids()
        source = trial.config.get(SOURCE) if self.sources else None
        values = dict(self.sources[source]) if source is not None else dict(trial.config)
        schedule = values.pop(SCHEDULE, None)  # a re-trained PBT trial's schedule: in its config, not a param
        tags = {"mat_dist.trial_id": tid, "mat_dist.kind": "tune-fidelity" if source else "tune-trial"}
        if source is not None:
            tags["mat_dist.source_trial"] = source
        tracker = Tracker.start(uri=self.uri, experiment=self.experiment,
                                run_name=f"{self.run_prefix}-{source or tid}", run_id=ids.get(tid),
                                parent_run_id=None if tid in ids else self.parent_run_id, tags=tags)
        if tid not in ids:
            ids[tid] = tracker.run_id
            write_atomic(Path(self.sweep_dir) / TRIAL_RUNS_FILE, json.dumps(ids, indent=1))
            params = {f"search.{k}": v for k, v in values.items()}
            try:
                cfg = trial_config(self.base_raw, values, schedule=schedule)
                tracker.log_params({**config_to_dict(cfg), **params})
            except Exception:  # a bad combination: the trial itself reports the error
                tracker.log_params(params)
        self._trackers[tid] = tracker
        self._logged[tid] = tracker.logged_steps("epoch")
        return tracker

    # ------------------------------------------------------------ Tune callback hooks

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tracker(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tracker = self._tracker(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step in self._logged[trial.trial_id]:
            return
        metrics = {k: v for k, v in result.items() if k not in _TUNE_KEYS and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        tracker.log_metrics(metrics, step=step)
        self._logged[trial.trial_id].add(step)

    def _end(self, trial: Any, status: str) -> None:
        tracker = self._tracker(trial)
        tracker.end(status)
        self._trackers.pop(trial.trial_id, None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")


def __getattr__(name: str) -> Any:
    """``TrialTracking``: ``TrialTrackingHooks`` as a ``ray.tune.Callback``, made on first use so that importing
    this module does not import Ray. It is then kept as a module attribute, so Tune pickles its instances (into
    the experiment state, for ``Tuner.restore``) by reference, as it would a class defined at module level."""
    if name != "TrialTracking":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ray.tune import Callback

    class TrialTracking(TrialTrackingHooks, Callback):
        """The Ray Tune callback that gives every trial its nested MLflow run (the module's docstring)."""

    TrialTracking.__qualname__ = "TrialTracking"
    globals()[name] = TrialTracking
    return TrialTracking
