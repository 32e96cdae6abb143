"""The model-based searcher: Optuna's TPE through Ray Tune's OptunaSearch, seeded, with ASHA.

- With a fixed seed TPE proposes the same trials twice (the searcher driven directly, no training), past its
  random start-up trials, and another seed proposes others; a choice among lists reaches the trial as a list.
- ``--resume`` of an interrupted TPE sweep does not repeat finished trials, and the searcher comes back with
  every trial it proposed (its Optuna study is restored, not started afresh).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pytest
from ray.tune import Callback

from mat_dist.plumbing.atomic import read_jsonl
from mat_dist.core.run_config import config_from_dict
from mat_dist.plumbing.errors import UserError
from mat_dist.tune.objective import OBJECTIVE, STARTS_FILE, trial_folder
from mat_dist.tune.searchers import search_alg
from mat_dist.tune.space import space_from_dict

SPACE = {
    "seed": 7, "searcher": {"name": "tpe", "startup_trials": 3},
    "params": {"optim.lr": {"loguniform": [1e-4, 1e-2]},
               "attack.eps.0": {"uniform": [0.5, 1.5]},
               "attack.steps": {"randint": [1, 4]},
               "method.loss_weights": {"choice": [[1, 1], [1, 2], [2, 1]]}},
}


def _fake_objective(config: dict) -> float:
    """A smooth score TPE can model: best near lr 1e-3, eps 1.0, weights [1, 2]."""
    import math

    return (-abs(math.log10(config["optim.lr"]) + 3) - abs(config["attack.eps.0"] - 1.0)
            + (0.5 if config["method.loss_weights"] == [1, 2] else 0.0) - 0.1 * config["attack.steps"])


def _propose(raw: dict, n: int) -> list[dict]:
    """Drive the sweep's search algorithm as Tune does, one trial at a time: suggest, report, complete."""
    alg, param_space = search_alg(space_from_dict(raw), concurrency=1)
    assert param_space == {}  # the searcher holds the space
    proposed = []
    for i in range(n):
        config = alg.suggest(f"t{i}")
        proposed.append(config)
        alg.on_trial_complete(f"t{i}", result={OBJECTIVE: _fake_objective(config), "training_iteration": 1})
    return proposed


def test_tpe_with_a_fixed_seed_proposes_the_same_trials_twice() -> None:
    first, second = _propose(SPACE, 8), _propose(SPACE, 8)
    assert first == second  # 3 random start-up trials, then 5 from the model: all the same
    other = _propose({**SPACE, "seed": 8}, 8)
    assert other != first
    for config in first:
        assert isinstance(config["method.loss_weights"], list) and config["method.loss_weights"] in ([1, 1], [1, 2],
                                                                                                     [2, 1])
        assert 1e-4 <= config["optim.lr"] <= 1e-2 and 1 <= config["attack.steps"] <= 3
        assert isinstance(config["attack.steps"], int)


def test_tpe_refuses_grid() -> None:
    with pytest.raises(UserError, match="grid has no TPE counterpart"):
        space_from_dict({"searcher": "tpe", "params": {"optim.lr": {"grid": [1e-3, 1e-2]}}})


class InterruptAt(Callback):
    """Sends the driver SIGUSR1 (what Ctrl-C does) when the second trial reports epoch 1; fires once (the file
    it writes, the cut trial's id, marks it). A searcher's trials have random ids: the order is the reports'."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)
        self.seen: list[str] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if trial.trial_id not in self.seen:
            self.seen.append(trial.trial_id)
        if self.seen.index(trial.trial_id) == 1 and result.get("epoch") == 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


def _searcher_states(experiment: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in experiment.glob("searcher-state-*.pkl")}


def _study_trials(experiment: Path, name: str) -> list:
    """The trials of the Optuna study in one searcher state Tune saved in the experiment folder."""
    with (experiment / name).open("rb") as f:
        state = pickle.load(f)
    return state["_ot_study"].trials


# The cut trial re-reports the epoch its checkpoint holds; the restored study already has it and says so.
@pytest.mark.filterwarnings("ignore:The reported value is ignored because this `step=")
def test_resumed_tpe_sweep_does_not_repeat_finished_trials(tmp_path: Path) -> None:
    from mat_dist.tune.sweep import SweepSettings, run_sweep
    from tune_helpers import ray_session, tiny_base

    ray_session()
    raw = tiny_base(tmp_path)
    raw["train"]["epochs"] = 2
    raw["data"]["limit_train"] = 160
    space = space_from_dict({
        "trials": 3, "seed": 1, "max_concurrent": 1, "searcher": {"name": "tpe", "startup_trials": 2},
        "scheduler": {"name": "asha", "grace_period": 2},
        "params": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
    }, source=str(tmp_path / "tpe-space.yaml"))
    output = tmp_path / "out"
    first = run_sweep(space, SweepSettings(output=output, base=config_from_dict(raw),
                                          callbacks=[InterruptAt(tmp_path / "fired")]))
    assert first.interrupted
    done = {r["trial_id"]: read_jsonl(trial_folder(output, r["trial_id"]) / "metrics.jsonl")
            for r in first.rows if r["status"] == "TERMINATED"}
    assert len(done) == 1  # trial 0 finished; trial 1 was cut in its second epoch; trial 2 was never proposed
    lr_before = {r["trial_id"]: r["param/optim.lr"] for r in first.rows}
    experiment = output / "ray" / "sweep"
    saved_before = _searcher_states(experiment)

    second = run_sweep(None, SweepSettings(output=output, resume=True))
    assert not second.interrupted and second.best_config is not None
    assert len(second.rows) == 3 and all(r["status"] == "TERMINATED" for r in second.rows)
    starts = {r["trial_id"]: [json.loads(x)["from_epoch"] for x in
                              (trial_folder(output, r["trial_id"]) / STARTS_FILE).read_text().splitlines()]
              for r in second.rows}
    for tid, history in done.items():
        assert starts[tid] == [0]  # the finished trial did not run again
        assert read_jsonl(trial_folder(output, tid) / "metrics.jsonl") == history
    cut = (tmp_path / "fired").read_text()  # cut at its first epoch: it restarts (from epoch 0 or 1), same values
    assert len(starts[cut]) == 2
    assert next(r for r in second.rows if r["trial_id"] == cut)["param/optim.lr"] == lr_before[cut]
    for r in second.rows:
        assert [m["epoch"] for m in read_jsonl(trial_folder(output, r["trial_id"]) / "metrics.jsonl")] == [1, 2]
    assert sum(len(s) for s in starts.values()) == 4      # 3 trials, one of them started twice
    # The searcher the resumed sweep saved is the restored one: its study holds the trials proposed before the
    # interruption (a fresh searcher's would hold the new proposal alone), and nothing the sweep did not run.
    # (How many of the last trials a save holds depends on when Tune last saved: at least these two.)
    after = _searcher_states(experiment)
    newest = max((n for n in after if saved_before.get(n) != after[n]), key=after.get)
    trials = _study_trials(experiment, newest)
    proposed = [t.params["optim.lr"] for t in trials]
    assert len(proposed) == len(set(proposed)) >= 2
    assert {lr_before[t] for t in done} | {lr_before[cut]} <= set(proposed)
    assert set(proposed) <= {r["param/optim.lr"] for r in second.rows}
    finished = next(t for t in trials if t.params["optim.lr"] == lr_before[next(iter(done))])
    assert finished.value == pytest.approx(next(r["objective"] for r in first.rows if r["trial_id"] in done))
