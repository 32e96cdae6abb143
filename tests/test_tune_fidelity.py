"""Proxy fidelity: the rank correlation against scipy's on a fixed table, which trials are re-trained, the full
budget; and a tiny sweep whose fidelity step re-trains exactly the trials it names at the full budget, then
``--confirm`` trains and evaluates the best and the base config on the test images.

The sweep: scikit-learn's 8x8 digits, MSD CNN, M=2, K=1; proxy 1 epoch on 160 images, full budget 2 epochs
on 320. One Ray runtime (2 CPUs) for the whole session (tune_helpers.ray_session).
"""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
from scipy.stats import spearmanr

from mat_dist.plumbing.atomic import read_jsonl
from mat_dist.core.run_config import config_from_dict, load_config
from mat_dist.tune.fidelity import (FIDELITY_DIR, PLAN_FILE, fidelity_rows, full_budget_base, pick_trials,
                                    rank_correlation)
from mat_dist.tune.objective import STARTS_FILE, trial_folder
from mat_dist.tune.space import space_from_dict, trial_config
from mat_dist.tune.sweep import ranked_trials

# A sweep's rows (proxy) in the order the sweep ranks them, and each re-run's last epoch (full budget).
PROXY = [{"trial_id": t, "epochs": e, "objective": o} for t, e, o in
         [("t3", 4, 0.62), ("t0", 4, 0.58), ("t5", 4, 0.58), ("t1", 2, 0.41), ("t4", 1, 0.30), ("t2", 1, 0.12)]]
FULL = {"t3": 0.55, "t0": 0.66, "t5": 0.60, "t1": 0.48, "t4": 0.51, "t2": 0.20}


def test_rank_correlation_equals_scipy_on_a_fixed_table() -> None:
    full = {t: {"epoch": 10, "objective": v, "val/robust_all": v, "val/clean_acc": 0.9} for t, v in FULL.items()}
    rows = fidelity_rows(list(reversed(PROXY)), full, top={"t3", "t0"}, full_epochs=10)  # any order in
    rho, p = rank_correlation([r["proxy_objective"] for r in rows], [r["full_objective"] for r in rows])
    expected = spearmanr([r["objective"] for r in PROXY], [FULL[r["trial_id"]] for r in PROXY])  # paired by id
    assert rho == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    # by hand: proxy ranks (ties averaged) 1, 2.5, 2.5, 4, 5, 6; full ranks 3, 1, 2, 5, 4, 6; sum d^2 = 8.5
    pearson_of_ranks = spearmanr([1, 2.5, 2.5, 4, 5, 6], [3, 1, 2, 5, 4, 6]).statistic
    assert rho == pytest.approx(pearson_of_ranks) and 0.7 < rho < 0.8
    assert {r["trial_id"]: r["picked"] for r in rows}["t3"] == "top"
    assert {r["trial_id"]: r["full_rank"] for r in rows} == {"t0": 1, "t5": 2, "t3": 3, "t4": 4, "t1": 5, "t2": 6}
    assert math.isnan(rank_correlation([0.1, 0.2], [0.3, 0.4])[0])      # two points: undefined
    assert math.isnan(rank_correlation([0.1, 0.1, 0.1], [0.3, 0.4, 0.5])[0])  # a constant column
    with pytest.raises(ValueError, match="unpaired"):
        rank_correlation([0.1, 0.2, 0.3], [0.1, 0.2])


def test_a_cut_re_run_is_left_out_of_the_correlation() -> None:
    full = {"t3": {"epoch": 10, "objective": 0.5}, "t0": {"epoch": 4, "objective": 0.9}}  # t0 cut at epoch 4
    rows = fidelity_rows(PROXY[:2], full, top={"t3"}, full_epochs=10)
    assert [r["complete"] for r in rows] == [True, False]
    assert "full_rank" not in rows[1]


def test_pick_trials_takes_the_top_and_a_seeded_draw_from_the_rest() -> None:
    ranked = PROXY + [{"trial_id": "t9", "epochs": 0, "objective": math.nan}]  # never reported: never picked
    top, drawn = pick_trials(ranked, top=2, extra=2, seed=0)
    assert top == ["t3", "t0"]
    assert len(drawn) == 2 and set(drawn) <= {"t5", "t1", "t4", "t2"}
    assert pick_trials(ranked, top=2, extra=2, seed=0) == (top, drawn)  # seeded
    draws = {tuple(pick_trials(ranked, top=2, extra=2, seed=s)[1]) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    assert pick_trials(ranked, top=5, extra=9, seed=0) == (["t3", "t0", "t5", "t1", "t4"], ["t2"])


def test_full_budget_undoes_the_proxys_epochs_and_data_and_keeps_the_rest(tiny_raw) -> None:
    proxy = copy.deepcopy(tiny_raw)
    proxy["train"]["epochs"], proxy["data"]["limit_train"], proxy["eval"]["examples"] = 1, 160, 20
    overrides = {"train.epochs": 1, "data.limit_train": 160, "eval.examples": 20}
    full = full_budget_base(proxy, tiny_raw, overrides=overrides, full={"attack.steps": 3}, source="space.yaml")
    cfg = config_from_dict(full)
    assert (cfg.train.epochs, cfg.data.limit_train) == (3, 320)   # the base's own budget
    assert cfg.eval.examples == 20 and cfg.attack.steps == 3      # other overrides kept; fidelity.full applied
    assert proxy["train"]["epochs"] == 1                          # the proxy is left as it was


def test_full_budget_may_not_move_the_objective() -> None:
    from mat_dist.plumbing.errors import UserError

    with pytest.raises(UserError, match="fidelity.full.eval.eps.linf"):
        space_from_dict({"fidelity": {"full": {"eval.eps.linf": 0.3}}, "params": {"optim.lr": {"choice": [0.1]}}})
    space_from_dict({"fidelity": {"full": {"eval.examples": 200}}, "params": {"optim.lr": {"choice": [0.1]}}})


# ---------------------------------------------------------------- the fidelity step alone (fast)

def test_the_fidelity_step_re_trains_exactly_the_trials_it_names(tmp_path) -> None:
    """A sweep folder of 4 finished trials (their configs and rows, made here): top 1 + 1 random re-trained
    at the full budget (1 epoch on 160 images), nothing else; every CPU is free afterwards."""
    from ray.util import placement_group_table

    from mat_dist.core.run_config import config_to_yaml
    from mat_dist.cluster.files import load_cluster
    from mat_dist.plumbing.atomic import write_atomic
    from mat_dist.tune.fidelity import run_fidelity
    from mat_dist.tune.trials import trial_shape
    from tune_helpers import ray_session, tiny_base, wait_for_full_cpus

    ray_session()
    proxy = tiny_base(tmp_path)
    proxy["train"]["epochs"], proxy["data"]["limit_train"] = 1, 64
    full = copy.deepcopy(proxy)
    full["data"]["limit_train"] = 160
    space = space_from_dict({"seed": 3, "params": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}},
                            source=str(tmp_path / "space.yaml"))
    out = tmp_path / "sweep"
    rows = []
    for i, (lr, objective) in enumerate([(0.003, 0.4), (0.001, 0.6), (0.0003, 0.2), (0.0001, 0.3)]):
        tid = f"abc_{i:05d}"
        write_atomic(trial_folder(out, tid) / "config.yaml", config_to_yaml(trial_config(proxy, {"optim.lr": lr})))
        rows.append({"trial_id": tid, "status": "TERMINATED", "stopped_early": False, "epochs": 1,
                     "objective": objective, "val/clean_acc": 0.5})
    order = ranked_trials(rows)
    cluster = load_cluster(None)
    fid = run_fidelity(output=out, space=space, ranked=order, full_raw=full, top=1, extra=1, cluster=cluster,
                       shape=trial_shape(cluster), concurrency=2, parent=None, verbose=0)
    plan = json.loads((out / FIDELITY_DIR / PLAN_FILE).read_text())
    assert plan["top"] == ["abc_00001"] and len(plan["random"]) == 1   # the best, and one of the other three
    named = plan["top"] + plan["random"]
    assert sorted(p.name for p in (out / FIDELITY_DIR / "trials").iterdir()) == sorted(named)
    assert [r["trial_id"] for r in fid.rows] == named and all(r["complete"] for r in fid.rows)
    lrs = {r["trial_id"]: lr for r, lr in zip(rows, (0.003, 0.001, 0.0003, 0.0001))}
    for tid in named:
        folder = trial_folder(out / FIDELITY_DIR, tid)
        cfg = load_config(folder / "config.yaml")
        assert cfg.optim.lr == lrs[tid] and cfg.data.limit_train == 160  # its values at the full budget
        history = read_jsonl(folder / "metrics.jsonl")
        assert [m["epoch"] for m in history] == [1]
        assert history[0]["cost/passes"] == 5 * 4  # 160 / 32 batches, MAT K=1: 2 forward + 2 backward each
        assert len((folder / STARTS_FILE).read_text().splitlines()) == 1
    available, total = wait_for_full_cpus()
    assert available == total
    assert not [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]


# ---------------------------------------------------------------- a tiny sweep, its fidelity step, --confirm

CONFIRM_SUITE = {
    "name": "tiny-confirm", "examples": 40, "shard_size": 40, "seed": 0,
    "eps": {"linf": 0.02, "l2": 0.1, "l1": 0.3},
    "resources": {"num_cpus": 1, "num_gpus": 0, "max_retries": 1},
    "attacks": {f"pgd_{n}": {"attack": "pgd", "norm": n, "params": {"steps": 3, "rel_alpha": 0.25}}
                for n in ("linf", "l2", "l1")},
    "transfer": {"attacks": []}, "curves": {"attacks": []},
}


@pytest.fixture(scope="module")
def fidelity_sweep(tmp_path_factory):  # about 3 minutes on 2 busy cores: the tests that use it are slow
    """4 trials (lr grid), 1 epoch on 160 images each; then the top 2 and 1 random re-trained for 2 epochs on
    320; then the best and the base config trained (1 seed, 2 epochs) and evaluated on 40 test images."""
    from mat_dist.tune.sweep import SweepSettings, run_sweep
    from tune_helpers import ray_session, tiny_base

    ray_session()
    tmp = tmp_path_factory.mktemp("fidelity")
    raw = tiny_base(tmp)
    raw["train"]["epochs"] = 2
    base = config_from_dict(raw)
    space = space_from_dict({
        "trials": 1, "seed": 0, "scheduler": {"name": "fifo"},
        "overrides": {"train.epochs": 1, "data.limit_train": 160},
        "fidelity": {"top": 2, "random": 1},
        "params": {"optim.lr": {"grid": [0.01, 1e-7, 0.005, 0.002]}},
    }, source=str(tmp / "fidelity-space.yaml"))
    result = run_sweep(space, SweepSettings(output=tmp / "out", base=base, confirm=1, confirm_suite=CONFIRM_SUITE))
    return result, base, space


@pytest.mark.slow
def test_fidelity_re_trains_exactly_the_trials_it_names_at_the_full_budget(fidelity_sweep) -> None:
    result, base, space = fidelity_sweep
    assert not result.interrupted and len(result.rows) == 4
    out = result.output
    plan = json.loads((out / FIDELITY_DIR / PLAN_FILE).read_text())
    ranked_ids = [r["trial_id"] for r in ranked_trials(result.rows)]
    assert plan["top"] == ranked_ids[:2] and len(plan["random"]) == 1 and plan["random"][0] in ranked_ids[2:]
    named = plan["top"] + plan["random"]
    assert sorted(p.name for p in (out / FIDELITY_DIR / "trials").iterdir()) == sorted(named)
    for tid in named:
        folder = trial_folder(out / FIDELITY_DIR, tid)
        cfg = load_config(folder / "config.yaml")
        sweep_cfg = load_config(trial_folder(out, tid) / "config.yaml")
        assert (sweep_cfg.train.epochs, sweep_cfg.data.limit_train) == (1, 160)  # the proxy
        assert (cfg.train.epochs, cfg.data.limit_train) == (2, 320)              # the base's full budget
        assert cfg.optim.lr == sweep_cfg.optim.lr and cfg.eval == sweep_cfg.eval  # its values, the same check
        assert cfg == trial_config(plan["full_base"], {"optim.lr": sweep_cfg.optim.lr}, name=cfg.name)
        assert [m["epoch"] for m in read_jsonl(folder / "metrics.jsonl")] == [1, 2]
        assert len((folder / STARTS_FILE).read_text().splitlines()) == 1
    with (out / "fidelity.csv").open() as f:
        table = list(csv.DictReader(f))
    assert sorted(r["trial_id"] for r in table) == sorted(named)
    proxy = {r["trial_id"]: r["objective"] for r in result.rows}
    full = {t: read_jsonl(trial_folder(out / FIDELITY_DIR, t) / "metrics.jsonl")[-1]["objective"] for t in named}
    expected = spearmanr([proxy[t] for t in named], [full[t] for t in named]).statistic
    summary = json.loads((out / "fidelity.json").read_text())
    if math.isnan(expected):
        assert math.isnan(result.fidelity.spearman) and summary["spearman"] != summary["spearman"]
    else:
        assert result.fidelity.spearman == pytest.approx(expected) == summary["spearman"]
    assert summary["full_budget"] == {"train.epochs": 2, "data.limit_train": 320}
    assert (out / "fidelity.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Proxy fidelity" in report and "Spearman" in report


@pytest.mark.slow
def test_every_trial_reports_its_cost_and_the_sweep_its_pareto_front(fidelity_sweep) -> None:
    result, _, _ = fidelity_sweep
    for r in result.rows:
        # 160 images / 32 = 5 batches per epoch, MAT with K=1: 2 forward + 2 backward passes per batch
        assert r["cost/passes"] == 5 * 4 * r["epochs"] and r["cost/seconds"] > 0
    with (result.output / "pareto.csv").open() as f:
        front = [r["trial_id"] for r in csv.DictReader(f)]
    assert front == [r["trial_id"] for r in result.front] and front
    assert (result.output / "pareto.png").stat().st_size > 1000


@pytest.mark.slow
def test_nothing_holds_resources_after_the_fidelity_step(fidelity_sweep) -> None:
    from ray.util import placement_group_table
    from tune_helpers import wait_for_full_cpus

    available, total = wait_for_full_cpus()
    assert available == total == 2
    assert not [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]


@pytest.mark.slow
def test_confirm_trains_and_evaluates_best_and_base_on_the_test_images(fidelity_sweep) -> None:
    result, base, _ = fidelity_sweep
    out = result.output
    confirm = json.loads((out / "confirm.json").read_text())
    rows = {r[0]: r for r in confirm["table"]["rows"]}
    assert set(rows) == {"base", "tuned"} and all(r[1] == "1" for r in rows.values())
    assert all("[" in cell for r in rows.values() for cell in r[2:7])  # every figure with its interval
    for name, lr in (("base", base.optim.lr), ("tuned", result.best["param/optim.lr"])):
        cfg = load_config(out / "confirm" / "runs" / name / "config.yaml")
        assert (cfg.train.epochs, cfg.data.limit_train, cfg.optim.lr) == (2, 320, lr)
        summary = json.loads((out / "confirm" / "evals" / name / "summary.json").read_text())
        assert summary["examples"] == 40 and "all_attacks" in summary
    assert result.confirm.verdict in confirm["verdict"]
    assert "## Confirmation on the test images" in (out / "report.md").read_text()
