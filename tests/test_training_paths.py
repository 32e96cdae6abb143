"""The three training paths record the same epochs: in-process, a Ray Train worker, a Tune trial.

All three hand each epoch to the one ``EpochRecorder``; for the same seeded
run (same config, one torch thread each, one rank) their metrics.jsonl lines
are byte-identical once the wall-clock field is cut out: ``epoch_time_s``,
the seconds an epoch took, is the only field of a line that is not a function
of the seed (a line is ``json.dumps(row, sort_keys=True)``, so cutting a key
and dumping again gives the original bytes without that key). A Tune trial's
line carries the objective (and what else its scoring adds) besides; cut to
the training line's keys it is byte-identical too.

The Tune trial costs a Tuner on top of the Ray runtime (tens of seconds on two
busy cores), so it is marked slow; the in-process vs Ray worker check runs by
default. Data: scikit-learn's 8x8 digits (conftest's tiny config), 2 epochs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from conftest import TINY
from mat_dist.cluster.files import ClusterConfig, LocalConfig, WorkersConfig
from mat_dist.core.run_config import config_from_dict
from tune_helpers import ray_session

WALL_CLOCK = {"epoch_time_s"}  # seconds per epoch: differs from run to run
EPOCHS = 2


def _base() -> dict:
    raw = copy.deepcopy(TINY)
    raw["train"].update({"epochs": EPOCHS, "threads": 1})
    return raw


def _lines(path: Path, keys: set[str] | None = None) -> list[str]:
    """metrics.jsonl's lines without the wall-clock field (and, with ``keys``, only those keys), re-dumped."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    return [json.dumps({k: v for k, v in r.items() if k not in WALL_CLOCK and (keys is None or k in keys)},
                       sort_keys=True) for r in rows]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Path:
    from mat_dist.training.in_process import train_in_process

    out = tmp_path_factory.mktemp("paths") / "in-process"
    train_in_process(config_from_dict(_base()), out)
    return out / "metrics.jsonl"


def test_a_ray_worker_writes_the_in_process_lines(in_process: Path, tmp_path: Path) -> None:
    from mat_dist.training.ray_job import train_ray

    ray_session()  # one local runtime with a dashboard, shared with the tune tests; train_ray attaches to it
    cluster = ClusterConfig(workers=WorkersConfig(num=1, cpus=1), local=LocalConfig(num_cpus=2), source="test")
    result = train_ray(config_from_dict(_base()), tmp_path / "ray", cluster)
    assert result.worker_summary["world_size"] == 1
    ray_lines, local_lines = _lines(tmp_path / "ray" / "metrics.jsonl"), _lines(in_process)
    assert ray_lines == local_lines
    assert all("val/robust_all" in json.loads(line) for line in local_lines)  # the lines hold the check


@pytest.mark.slow
def test_a_tune_trial_writes_the_in_process_lines(in_process: Path, tmp_path: Path) -> None:
    from ray import tune

    from mat_dist.tune.objective import OBJECTIVE, ROBUST_ALL, train_trial

    ray_session()
    spec = {"base": _base(), "sweep_dir": str(tmp_path / "sweep"), "threads": 1, "min_clean_acc": None}
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(train_trial, spec=spec), {"cpu": 1}),
                       param_space={}, tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(name="paths", storage_path=str(tmp_path / "ray"), verbose=0))
    assert not tuner.fit().errors
    (trial_metrics,) = (tmp_path / "sweep" / "trials").glob("*/metrics.jsonl")
    local_keys = set(json.loads(in_process.read_text().splitlines()[0]))
    assert _lines(trial_metrics, local_keys) == _lines(in_process)
    last = json.loads(trial_metrics.read_text().splitlines()[-1])
    assert last[OBJECTIVE] == last[ROBUST_ALL]  # the trial's own keys come on top: here no constraint
