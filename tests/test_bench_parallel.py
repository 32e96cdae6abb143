"""The evaluator and Ray Train benchmarks run on tiny settings and report what they claim (no assertion on time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate_helpers import tiny_model_path
from mat_dist.bench.parallel import bench_evaluator, bench_ray_train
from mat_dist.core.run_config import load_config

TINY_SUITE = """
name: bench-tiny
examples: 20
shard_size: 10
seed: 0
eps: {linf: 0.1, l2: 1.0, l1: 3.0}
attacks:
  pgd_linf: {attack: pgd, norm: linf, params: {steps: 2}}
  pgd_l1: {attack: pgd, norm: l1, params: {steps: 2}}
  fb_pgd_l2: {attack: fb_pgd, norm: l2, params: {steps: 2}}
"""


def test_evaluator_bench_times_every_attack_and_both_worker_counts(tmp_path: Path) -> None:
    suite = tmp_path / "bench-tiny.yaml"
    suite.write_text(TINY_SUITE)
    result = bench_evaluator(tiny_model_path(), suite_name=str(suite), examples=20, repeats=2, warmup=0,
                             dataset="digits")
    assert set(result["attacks"]) == {"pgd_linf", "pgd_l1", "fb_pgd_l2"}
    for row in result["attacks"].values():
        assert row["examples"] == 20 and row["n"] == 2
        assert row["examples_per_s"] == pytest.approx(20 / row["median_s"])
    workers = result["ray_workers"]
    assert workers["shards"] == 3 * 2  # 3 attacks x 2 shards of 10 examples
    assert set(workers["workers"]) == {"1", "2"} and workers["speedup"]["1"] == 1.0
    assert result["ratios"]["eval_2_workers_over_1"] == workers["speedup"]["2"] > 0
    json.dumps(result)


@pytest.mark.slow  # about a minute: three Ray Train jobs
def test_ray_train_bench_runs_each_path_and_one_worker_trains_like_the_loop(tmp_path: Path) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()  # Train needs the runtime it starts itself (dashboard for its placement-group cleaner)
    cfg = load_config("mnist5k-mat", ["data.name=digits", "data.val_size=100", "data.limit_train=256",
                                      "data.batch_size=64", "attack.steps=2", "eval.examples=50", "eval.steps=2",
                                      "eval.eps={linf: 0.05, l2: 0.5, l1: 2.0}", "train.epochs=1"])
    result = bench_ray_train(cfg, repeats=1)
    assert set(result["paths"]) == {"in_process", "ray_1_worker", "ray_2_workers"}
    for row in result["paths"].values():
        assert row["epoch_s"]["median_s"] > 0 and row["wall_s"]["median_s"] >= row["epoch_s"]["median_s"]
    # One Ray worker with every CPU runs the very loop of the in-process path: the same loss.
    loop, one = result["paths"]["in_process"]["final_loss"][0], result["paths"]["ray_1_worker"]["final_loss"][0]
    assert one == pytest.approx(loop, rel=1e-5)
    assert set(result["ratios"]) == {"ray_1_worker_over_in_process_epoch", "ray_1_worker_over_in_process_wall",
                                     "ray_2_workers_speedup_epoch", "ray_2_workers_speedup_wall"}
    json.dumps(result)
