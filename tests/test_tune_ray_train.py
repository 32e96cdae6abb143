"""A sweep whose trials are 2-worker Ray Train (DDP) jobs: ASHA stops one, and every placement group is freed.

Slow (each trial starts a Ray Train controller and 2 workers): pytest -m slow tests/test_tune_ray_train.py
"""

from __future__ import annotations

import pytest

from mat_dist.core.run_config import config_from_dict
from mat_dist.cluster.files import ClusterConfig, LocalConfig, WorkersConfig
from mat_dist.tune.space import space_from_dict
from mat_dist.tune.sweep import SweepSettings, run_sweep
from mat_dist.tune.trials import trial_shape
from tune_helpers import ray_session, tiny_base, wait_for_full_cpus

pytestmark = pytest.mark.slow


def test_trials_as_ray_train_jobs_report_the_objective_and_release_resources(tmp_path) -> None:
    import ray
    from ray.util import placement_group_table

    ray_session()
    # 2 workers x 0.5 CPU + the trial's 0.01-CPU driver: one trial at a time on 2 CPUs
    cluster = ClusterConfig(workers=WorkersConfig(num=2, cpus=0.5), local=LocalConfig(num_cpus=2))
    assert trial_shape(cluster).kind == "ray_train"
    raw = tiny_base(tmp_path)
    # 960 images (30 steps an epoch): lr 0.003 is then well above chance after one epoch (measured in-process:
    # union robust 0.52 against 0.1), so ASHA's first-rung decision does not hang on noise, as it did with 320.
    raw["data"]["limit_train"] = 960
    base = config_from_dict(raw)
    space = space_from_dict({
        "trials": 1, "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "params": {"optim.lr": {"grid": [0.003, 1e-7, 1e-7]}},
    }, source=str(tmp_path / "ddp-space.yaml"))
    result = run_sweep(space, SweepSettings(output=tmp_path / "out", base=base, cluster=cluster))
    assert not result.interrupted and len(result.rows) == 3
    assert all(r["status"] == "TERMINATED" for r in result.rows), result.rows
    assert result.stopped_early >= 1 and result.best["param/optim.lr"] == 0.003
    assert all(r["epochs"] >= 1 and 0 <= r["objective"] <= 1 for r in result.rows)
    available, total = wait_for_full_cpus()
    assert available == total
    live = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not live, live
