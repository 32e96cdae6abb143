"""A tiny sweep on 2 CPUs: it completes, ASHA stops a trial early, every CPU is free afterwards, MLflow holds a
parent run with one nested run per trial, the best config trains with `matd train`, and an interrupted sweep
resumes without re-running finished trials.

Data: scikit-learn's 8x8 digits (320 training images), MSD CNN, M=2, K=1, 3 epochs: a trial takes seconds.
One Ray runtime (2 CPUs) for the whole session (tune_helpers.ray_session).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from ray.tune import Callback

from mat_dist.core.run_config import config_from_dict, load_config
from mat_dist.plumbing.atomic import read_jsonl
from mat_dist.tune.objective import STARTS_FILE, trial_folder
from mat_dist.tune.space import space_from_dict
from mat_dist.tune.sweep import SweepSettings, run_sweep
from tune_helpers import SMALL_EVAL_EPS, ray_session, tiny_base, wait_for_full_cpus

GOOD_LR, BAD_LR = 0.003, 1e-7  # a learning rate that learns in 1 epoch, and one that stays at chance


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """4 trials, 2 at a time, ASHA (grace 1, halving): lr grid good, bad, good, bad; eps of sub-model 0 random."""
    ray_session()
    tmp = tmp_path_factory.mktemp("sweep")
    base = config_from_dict(tiny_base(tmp, tracking=True))
    space = space_from_dict({
        "trials": 1, "seed": 0,
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "params": {"optim.lr": {"grid": [GOOD_LR, BAD_LR, GOOD_LR, BAD_LR]},
                   "attack.eps.0": {"uniform": [0.5, 1.5]}},
    }, source=str(tmp / "tiny-space.yaml"))
    result = run_sweep(space, SweepSettings(output=tmp / "out", base=base))
    return result, base, tmp


def test_tiny_sweep_completes_and_asha_stops_a_trial_early(sweep) -> None:
    result, base, _ = sweep
    assert not result.interrupted
    assert len(result.rows) == 4 and all(r["status"] == "TERMINATED" for r in result.rows)
    stopped = [r for r in result.rows if r["stopped_early"]]
    assert stopped, result.rows
    assert all(r["epochs"] < base.train.epochs for r in stopped)
    assert all(r["param/optim.lr"] == BAD_LR for r in stopped)  # ASHA stops the trials that do not learn
    assert result.best is not None and result.best["param/optim.lr"] == GOOD_LR
    assert result.best["epochs"] == base.train.epochs
    # every trial is evaluated at the base's eval radii, whatever it trained with
    for r in result.rows:
        trial_cfg = load_config(trial_folder(result.output, r["trial_id"]) / "config.yaml")
        assert trial_cfg.eval == base.eval
        assert trial_cfg.attack.eps[0] == pytest.approx(r["param/attack.eps.0"])
        assert {k.value: v for k, v in trial_cfg.eval.eps.items()} == SMALL_EVAL_EPS
    table = (result.output / "trials.csv").read_text().splitlines()
    assert len(table) == 5 and "param/optim.lr" in table[0] and "stopped_early" in table[0]
    assert (result.output / "objective_vs_params.png").stat().st_size > 1000


def test_nothing_holds_resources_after_the_sweep(sweep) -> None:
    import ray
    from ray.util import placement_group_table

    available, total = wait_for_full_cpus()
    assert total == 2 and available == total
    live = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not live, live


def test_mlflow_parent_run_with_a_nested_run_per_trial(sweep) -> None:
    import mlflow

    result, base, _ = sweep
    client = mlflow.MlflowClient(tracking_uri=base.tracking.uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"trials.csv", "objective_vs_params.png", "best_config.yaml"} <= artifacts
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert len(children) == 4
    by_trial = {c.data.tags["mat_dist.trial_id"]: c for c in children}
    for row in result.rows:
        child = by_trial[row["trial_id"]]
        assert float(child.data.params["search.optim.lr"]) == row["param/optim.lr"]
        assert child.data.params["attack.steps"] == "1"
        history = client.get_metric_history(child.info.run_id, "objective")
        assert sorted(m.step for m in history) == list(range(1, row["epochs"] + 1))  # each epoch once


def test_best_config_trains_with_matd_train_as_it_is(sweep) -> None:
    from typer.testing import CliRunner

    from mat_dist.cli.main import app

    result, _, tmp = sweep
    text = result.best_config.read_text()
    assert text.splitlines()[1] == f"# Run: matd train --config {result.best_config}"
    cfg = load_config(result.best_config)
    assert cfg.optim.lr == GOOD_LR and cfg.name.endswith("-tuned")
    out = tmp / "retrain"
    run = CliRunner().invoke(app, ["train", "--config", str(result.best_config), "--cluster", "none",
                                   "--output", str(out), "train.epochs=1"])
    assert run.exit_code == 0, run.output
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    assert (out / "model.safetensors").is_file()


class InterruptOnce(Callback):
    """Sends the driver SIGUSR1 (what Ctrl-C does to a sweep) when trial 1 reports its second epoch.

At its second epoch the checkpoint of the first is surely registered with Tune (the checkpoint that
comes with a result is registered after the result's callbacks), so the resumed trial has one to start from.

    Whether it fired is kept in a file: Tune pickles callbacks into the experiment and brings them back
    on restore, so an in-memory flag would be reset.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if trial.trial_id.endswith("_00001") and result.get("epoch") == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text("fired")
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.slow  # about a minute; test_tune_tpe resumes an interrupted sweep (with its searcher) in the default run
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    ray_session()
    base = config_from_dict(tiny_base(tmp_path))
    space = space_from_dict({
        "trials": 1, "max_concurrent": 1, "scheduler": {"name": "fifo"},
        "params": {"optim.lr": {"grid": [GOOD_LR, 0.002, 0.001]}},
    }, source=str(tmp_path / "resume-space.yaml"))
    output = tmp_path / "out"
    first = run_sweep(space, SweepSettings(output=output, base=base, callbacks=[InterruptOnce(tmp_path / "fired")]))
    assert first.interrupted and first.best_config is None
    done_before = {r["trial_id"]: read_jsonl(trial_folder(output, r["trial_id"]) / "metrics.jsonl")
                   for r in first.rows if r["status"] == "TERMINATED"}
    assert len(done_before) == 1  # trial 0 finished; trial 1 was cut in epoch 2 or 3; trial 2 had not started

    second = run_sweep(None, SweepSettings(output=output, resume=True))
    assert not second.interrupted and second.best_config is not None
    assert len(second.rows) == 3 and all(r["status"] == "TERMINATED" for r in second.rows)
    starts = {}
    for r in second.rows:
        folder = trial_folder(output, r["trial_id"])
        starts[r["trial_id"]] = [json.loads(x)["from_epoch"] for x in (folder / STARTS_FILE).read_text().splitlines()]
        assert [m["epoch"] for m in read_jsonl(folder / "metrics.jsonl")] == [1, 2, 3]  # each epoch once
    for tid, history in done_before.items():
        assert starts[tid] == [0]  # the finished trial did not run again
        assert read_jsonl(trial_folder(output, tid) / "metrics.jsonl") == history
    cut = next(tid for tid in starts if tid.endswith("_00001"))
    assert starts[cut][0] == 0 and len(starts[cut]) == 2 and starts[cut][1] >= 1  # resumed from its checkpoint
    assert sum(len(s) for s in starts.values()) == 4


def test_a_time_budget_ends_the_sweep_and_ranks_what_finished(tmp_path: Path) -> None:
    """50 one-epoch trials asked for, 20 s given: Tune stops, the sweep is not 'interrupted', the best finished
    trial is exported, and the trials the budget cut or never started are neither best nor errors.

    One epoch per trial, so that a trial with a result has finished whatever the machine's speed (with 3 epochs a
    slow CI machine had cut every trial before its last epoch; then the best is a cut trial, by design)."""
    ray_session()
    raw = tiny_base(tmp_path)
    raw["train"]["epochs"] = 1
    base = config_from_dict(raw)
    space = space_from_dict({"trials": 50, "seed": 0, "time_budget_s": 20, "scheduler": {"name": "fifo"},
                             "params": {"optim.lr": {"loguniform": [1e-3, 1e-2]}}},
                            source=str(tmp_path / "budget.yaml"))
    result = run_sweep(space, SweepSettings(output=tmp_path / "out", base=base))
    assert not result.interrupted and result.best is not None and result.best_config.is_file()
    assert 1 <= len(result.rows) < 50
    assert result.best["status"] == "TERMINATED" and result.best["epochs"] == base.train.epochs
    assert not [r for r in result.rows if r["status"] == "ERROR"]
    # --resume of a sweep whose budget was spent (as for a later --fidelity): no new trial, not 'interrupted'
    starts = {r["trial_id"]: r["starts"] for r in result.rows}
    again = run_sweep(None, SweepSettings(output=tmp_path / "out", resume=True))
    assert not again.interrupted and again.best["trial_id"] == result.best["trial_id"]
    assert {r["trial_id"]: r["starts"] for r in again.rows} == starts
