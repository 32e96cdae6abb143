"""Population Based Training over the per-epoch schedule of radii, step sizes and loss weights.

- A run config's ``schedule`` is what the trainer trains with, epoch by epoch, and bad schedules are refused.
- The schedule a trial builds: phase 0 holds its starting values; a restart with changed values adds a phase.
- A tiny PBT sweep (2 trials at once, a decision every epoch): at least one exploit happens (a trial
  continues from another's checkpoint with perturbed values), the exported best config replays with
  ``matd train`` as it is, the replayed run trains with the winner's schedule epoch by epoch, and every
  CPU and placement group is free afterwards, exploited trials included.
"""

from __future__ import annotations

import copy

import pytest

from mat_dist.plumbing.atomic import read_jsonl
from mat_dist.core.run_config import config_from_dict, config_to_dict, load_config, scheduled_values
from mat_dist.plumbing.errors import UserError
from mat_dist.tune.objective import trial_folder
from mat_dist.tune.pbt import ClipToBounds, exploits, extend_schedule
from mat_dist.tune.space import space_from_dict


def test_scheduled_values_follow_the_phases(tiny_raw) -> None:
    tiny_raw["train"]["epochs"] = 4
    tiny_raw["schedule"] = [{"epoch": 0, "eps": [0.5, 0.05]}, {"epoch": 2, "alpha": [0.2, 0.02]},
                            {"epoch": 3, "eps": [0.8, 0.08], "loss_weights": [1, 3]}]
    cfg = config_from_dict(tiny_raw)
    got = [scheduled_values(cfg, e) for e in range(4)]
    assert [v.eps for v in got] == [[0.5, 0.05]] * 3 + [[0.8, 0.08]]
    assert [v.alpha for v in got] == [[0.5, 0.05]] * 2 + [[0.2, 0.02]] * 2  # the base's until epoch 2
    assert [v.loss_weights for v in got] == [[1.0, 1.0]] * 3 + [[1.0, 3.0]]
    assert config_from_dict(config_to_dict(cfg)) == cfg  # written out and read back unchanged
    assert config_to_dict(cfg)["schedule"][1] == {"epoch": 2, "alpha": [0.2, 0.02]}  # only what a phase sets


@pytest.mark.parametrize("schedule,fragment", [
    ([{"epoch": 3}], "past the last epoch"),
    ([{"epoch": 1}, {"epoch": 1}], "must be later than the phase before"),
    ([{"epoch": 0, "eps": [1.0]}], "give one per attack norm"),
    ([{"epoch": 0, "eps": [1.0, -0.1]}], "must be positive"),
    ([{"epoch": 0, "eps": [1.0, 2.0]}], "above 1"),
    ([{"epoch": 0, "loss_weights": [0, 0]}], "must not be all zero"),
    ([{"epoch": 0, "loss_weights": [1, 1, 1]}], "one per sub-model"),
    ([{"epoch": 0, "lr": 0.1}], "unknown config key 'schedule.0.lr'"),
], ids=["late", "not rising", "short eps", "negative radius", "linf above 1", "zero weights", "long weights",
        "unknown key"])
def test_a_bad_schedule_gets_one_clear_line(tiny_raw, schedule, fragment) -> None:
    tiny_raw["schedule"] = schedule
    with pytest.raises(UserError) as err:
        config_from_dict(tiny_raw, source="run.yaml")
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_trainer_trains_each_epoch_with_the_scheduled_values(tiny_raw) -> None:
    """Two epochs on 64 images: the threat models of each epoch and the metrics lines carry the phase's values."""
    from mat_dist.data import load_splits
    from mat_dist.core.trainer import Trainer, training_threats

    tiny_raw["train"]["epochs"], tiny_raw["data"]["limit_train"], tiny_raw["eval"]["examples"] = 2, 64, 8
    tiny_raw["attack"]["steps"] = 1
    tiny_raw["schedule"] = [{"epoch": 1, "eps": [0.5, 0.03], "alpha": [0.3, 0.01], "loss_weights": [2, 1]}]
    cfg = config_from_dict(tiny_raw)
    assert [t.eps for t in training_threats(cfg, epoch=0)] == [1.0, 0.1]
    assert [t.eps for t in training_threats(cfg, epoch=1)] == [0.5, 0.03]
    assert [t.alpha for t in training_threats(cfg, epoch=1)] == [0.3, 0.01]
    splits = load_splits(cfg.data.name, val_size=cfg.data.val_size, seed=cfg.seed, limit_train=64)
    trainer = Trainer(cfg, splits)
    lines = []
    trainer.fit(lambda metrics, _: lines.append(metrics))
    assert [(m["schedule/eps.0"], m["schedule/eps.1"]) for m in lines] == [(1.0, 0.1), (0.5, 0.03)]
    assert [(m["schedule/loss_weights.0"], m["schedule/loss_weights.1"]) for m in lines] == [(1.0, 1.0), (2.0, 1.0)]
    assert trainer.loss_weights.tolist() == [2.0, 1.0]


def test_a_trial_schedule_starts_with_its_values_and_adds_a_phase_per_change() -> None:
    start = {"attack.eps": [1.0, 0.1], "method.loss_weights": [1, 1]}
    fresh = extend_schedule([], 0, start)
    assert fresh == [{"epoch": 0, "eps": [1.0, 0.1], "loss_weights": [1.0, 1.0]}]
    assert extend_schedule(fresh, 2, start) == fresh  # a restart with the same values (a pause): no new phase
    changed = extend_schedule(fresh, 2, {"attack.eps": [1.2, 0.1], "method.loss_weights": [1, 1]})
    assert changed == fresh + [{"epoch": 2, "eps": [1.2, 0.1]}]  # only the list that changed
    # a donor's lineage past the epoch copied is not the trial's
    again = extend_schedule(changed + [{"epoch": 3, "eps": [0.9, 0.1]}], 3, {"attack.eps": [0.5, 0.1],
                                                                           "method.loss_weights": [1, 1]})
    assert again == changed + [{"epoch": 3, "eps": [0.5, 0.1]}]


def test_explore_stays_inside_the_searched_range() -> None:
    clip = ClipToBounds({"attack.eps.0": (0.5, 1.5)})
    assert clip({"attack.eps.0": 1.8, "other": 3})["attack.eps.0"] == 1.5
    assert clip({"attack.eps.0": 0.4})["attack.eps.0"] == 0.5
    assert clip({"attack.eps.0": 1.0})["attack.eps.0"] == 1.0


@pytest.mark.parametrize("change,fragment", [
    ({"searcher": {"name": "tpe"}}, "use searcher random"),
    ({"params": {"optim.lr": {"uniform": [0.001, 0.01]}}}, "only attack.eps, attack.alpha, method.loss_weights"),
    ({"params": {"attack.eps.0": {"grid": [0.5, 1.0]}}}, "grid cannot be perturbed"),
    ({"params": {"schedule": {"choice": [[]]}}}, "cannot be searched"),
], ids=["tpe", "not schedulable", "grid", "schedule itself"])
def test_a_pbt_space_searches_only_what_a_config_can_schedule(change, fragment) -> None:
    raw = {"scheduler": {"name": "pbt"}, "params": {"attack.eps.0": {"uniform": [0.5, 1.5]}}, **change}
    with pytest.raises(UserError) as err:
        space_from_dict(raw, source="pbt.yaml")
    assert fragment in str(err.value) and str(err.value).startswith("pbt.yaml"), str(err.value)


# ---------------------------------------------------------------- a tiny PBT sweep

@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory):
    """2 trials at once, 2 epochs on 160 images; after epoch 1 the worse one copies the better one."""
    from mat_dist.cluster.files import cluster_from_dict
    from mat_dist.tune.sweep import SweepSettings, run_sweep
    from tune_helpers import ray_session, tiny_base

    ray_session()
    tmp = tmp_path_factory.mktemp("pbt")
    raw = tiny_base(tmp)
    raw["train"]["epochs"], raw["data"]["limit_train"] = 2, 160
    base = config_from_dict(raw)
    space = space_from_dict({
        "trials": 2, "seed": 1,
        "scheduler": {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                      "resample_probability": 0.0},
        # a wide range: explore (x0.8 or x1.2) seldom hits a bound, where clipping could leave a value as it was
        "params": {"attack.eps.0": {"loguniform": [0.2, 4.0]},
                   "method.loss_weights": {"choice": [[1, 1], [1, 2], [2, 1]]}},
    }, source=str(tmp / "pbt-space.yaml"))
    one_cpu = cluster_from_dict({"workers": {"num": 1, "cpus": 1}}, source="one-cpu.yaml")  # 2 trials at once
    result = run_sweep(space, SweepSettings(output=tmp / "out", base=base, cluster=one_cpu))
    return result, base, tmp


def test_pbt_exploits_a_top_trial_with_perturbed_values(pbt_sweep) -> None:
    result, base, _ = pbt_sweep
    assert not result.interrupted and len(result.rows) == 2
    assert all(r["status"] == "TERMINATED" and r["epochs"] == base.train.epochs for r in result.rows)
    records = {r["trial_id"]: exploits(trial_folder(result.output, r["trial_id"])) for r in result.rows}
    done = [(tid, e) for tid, es in records.items() for e in es]
    assert done, "no trial exploited another"
    for tid, e in done:
        assert e["from_trial"] != tid and e["from_trial"] in records and 1 <= e["epoch"] < base.train.epochs
        assert e["after"] != e["before"] or e["after"].keys() != e["before"].keys()  # explored, not a copy
        # the copied trial's history up to the exploit is now this trial's
        own = read_jsonl(trial_folder(result.output, tid) / "metrics.jsonl")
        assert [m["epoch"] for m in own] == list(range(1, base.train.epochs + 1))
    for tid in records:
        cfg = load_config(trial_folder(result.output, tid) / "config.yaml")
        assert cfg.schedule and cfg.schedule[0].epoch == 0
        # the last phase holds the values the trial ended with
        assert cfg.attack.eps[0] == pytest.approx(scheduled_values(cfg, base.train.epochs - 1).eps[0])
    report = (result.output / "report.md").read_text()
    assert "## Population Based Training" in report and f"{len(done)} exploit(s)" in report
    exploited = {tid for tid, _ in done}
    assert any(len(load_config(trial_folder(result.output, t) / "config.yaml").schedule) > 1 for t in exploited)


def test_the_best_pbt_schedule_replays_with_matd_train(pbt_sweep) -> None:
    from typer.testing import CliRunner

    from mat_dist.cli.main import app

    result, base, tmp = pbt_sweep
    winner = load_config(trial_folder(result.output, result.best["trial_id"]) / "config.yaml")
    exported = load_config(result.best_config)
    assert exported.schedule == winner.schedule and exported.attack == winner.attack
    out = tmp / "replay"
    run = CliRunner().invoke(app, ["train", "--config", str(result.best_config), "--cluster", "none",
                                   "--output", str(out)])
    assert run.exit_code == 0, run.output
    replayed = load_config(out / "config.yaml")
    assert replayed.schedule == winner.schedule
    keys = [k for k in read_jsonl(out / "metrics.jsonl")[0] if k.startswith("schedule/")]
    assert keys
    trained = [{k: m[k] for k in keys} for m in read_jsonl(out / "metrics.jsonl")]
    lineage = [{k: m[k] for k in keys} for m in
               read_jsonl(trial_folder(result.output, result.best["trial_id"]) / "metrics.jsonl")]
    assert trained == lineage  # epoch by epoch, the values the winner's lineage trained with
    # and, on one CPU thread, the very training: the replay from scratch retraces the exploits' weights
    replay_loss = [m["train/loss"] for m in read_jsonl(out / "metrics.jsonl")]
    winner_loss = [m["train/loss"] for m in
                   read_jsonl(trial_folder(result.output, result.best["trial_id"]) / "metrics.jsonl")]
    assert replay_loss == pytest.approx(winner_loss, rel=1e-5)


def test_nothing_holds_resources_after_a_pbt_sweep(pbt_sweep) -> None:
    from ray.util import placement_group_table

    from tune_helpers import wait_for_full_cpus

    available, total = wait_for_full_cpus()
    assert total == 2 and available == total
    assert not [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]


def test_pbt_needs_single_process_trials(tmp_path) -> None:
    from mat_dist.cluster.files import cluster_from_dict
    from mat_dist.tune.sweep import SweepSettings, run_sweep
    from tune_helpers import tiny_base

    space = space_from_dict({"scheduler": {"name": "pbt"}, "params": {"attack.eps.0": {"uniform": [0.5, 1.5]}}},
                            source="pbt.yaml")
    cluster = cluster_from_dict({"workers": {"num": 2, "cpus": 1}}, source="two.yaml")
    with pytest.raises(UserError, match="scheduler pbt needs single-process trials"):
        run_sweep(space, SweepSettings(output=tmp_path / "out", cluster=cluster,
                                       base=config_from_dict(copy.deepcopy(tiny_base(tmp_path)))))


def test_the_fidelity_step_re_trains_a_pbt_trial_with_its_schedule(tmp_path) -> None:
    """A PBT trial's config (made here) re-trained at the full budget trains its schedule, not its last values."""
    from mat_dist.plumbing.atomic import write_atomic
    from mat_dist.cluster.files import load_cluster
    from mat_dist.core.run_config import config_to_yaml
    from mat_dist.tune.fidelity import FIDELITY_DIR, run_fidelity
    from mat_dist.tune.space import trial_config
    from mat_dist.tune.sweep import ranked_trials
    from mat_dist.tune.trials import trial_shape
    from tune_helpers import ray_session, tiny_base

    ray_session()
    proxy = tiny_base(tmp_path)
    proxy["train"]["epochs"], proxy["data"]["limit_train"] = 2, 64
    full = copy.deepcopy(proxy)
    full["data"]["limit_train"] = 96
    space = space_from_dict({"scheduler": {"name": "pbt"}, "params": {"attack.eps.0": {"uniform": [0.5, 1.5]}}},
                            source=str(tmp_path / "pbt.yaml"))
    schedule = [{"epoch": 0, "eps": [0.6, 0.1]}, {"epoch": 1, "eps": [1.2, 0.1]}]
    out = tmp_path / "sweep"
    write_atomic(trial_folder(out, "pbt_00000") / "config.yaml",
                 config_to_yaml(trial_config(proxy, {"attack.eps.0": 1.2}, schedule=schedule)))
    rows = [{"trial_id": "pbt_00000", "status": "TERMINATED", "stopped_early": False, "epochs": 2,
             "objective": 0.5, "val/clean_acc": 0.5}]
    cluster = load_cluster(None)
    fid = run_fidelity(output=out, space=space, ranked=ranked_trials(rows), full_raw=full, top=1, extra=0, cluster=cluster,
                       shape=trial_shape(cluster), concurrency=1, parent=None, verbose=0)
    assert [r["trial_id"] for r in fid.rows] == ["pbt_00000"] and fid.rows[0]["complete"]
    folder = trial_folder(out / FIDELITY_DIR, "pbt_00000")
    cfg = load_config(folder / "config.yaml")
    assert cfg.data.limit_train == 96 and config_to_dict(cfg)["schedule"] == schedule
    assert [m["schedule/eps.0"] for m in read_jsonl(folder / "metrics.jsonl")] == [0.6, 1.2]
