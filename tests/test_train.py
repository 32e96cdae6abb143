"""The local training run: output folder, metrics, checkpoints, resume, MLflow, divergence."""

import json

import pytest
import torch
from safetensors.torch import load_file

import mat_dist
from mat_dist.core.run_config import config_from_dict
from mat_dist.plumbing.errors import UserError
from mat_dist.plumbing.atomic import read_jsonl
from mat_dist.core.trainer import TrainingDiverged, piecewise_linear, radius_scale
from mat_dist.training.in_process import train_in_process


class Interrupt(Exception):
    pass


def _stop_after(epoch):
    def on_epoch(metrics):
        if metrics["epoch"] == epoch:
            raise Interrupt
    return on_epoch


def test_run_folder_holds_config_metrics_checkpoints_and_model(tmp_path, tiny_raw):
    cfg = config_from_dict(tiny_raw)
    result = train_in_process(cfg, tmp_path / "run")
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003"]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3] == [r["epoch"] for r in result.metrics]
    for key in ("train/loss_m0", "train/loss_m1", "val/clean_acc", "val/robust_linf", "val/robust_l2",
                "val/robust_l1", "val/robust_all", "val/clean_acc_m1", "epoch_time_s"):
        assert key in rows[-1]
    # training cost: 320 images in batches of 32 = 10 batches per epoch, MAT with K=2: 3 forward + 3 backward each
    assert [r["train/passes"] for r in rows] == [60.0, 120.0, 180.0]
    assert config_from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text())) == cfg
    model = mat_dist.load_model(out)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert "| 3 |" in (out / "report.md").read_text()


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, tiny_raw):
    cfg = config_from_dict(tiny_raw)
    train_in_process(cfg, tmp_path / "whole")
    with pytest.raises(Interrupt):
        train_in_process(cfg, tmp_path / "cut", on_epoch=_stop_after(2))
    # A crash after the metrics line but before the checkpoint: a stray epoch-3 line.
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 3, "stray": True}) + "\n" + '{"epoch": 4, "cut')
    resumed = []
    train_in_process(cfg, tmp_path / "cut", resume=True, on_epoch=lambda m: resumed.append(m["epoch"]))
    assert resumed == [3]
    rows = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "stray" not in rows[-1]
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "model.safetensors"))
    for key in whole:
        torch.testing.assert_close(cut[key], whole[key], rtol=0, atol=0)


def test_new_run_refuses_a_used_folder_and_resume_refuses_an_empty_one(tmp_path, tiny_raw):
    cfg = config_from_dict(tiny_raw | {"train": {"epochs": 1, "threads": 1}})
    with pytest.raises(UserError, match="holds no run"):
        train_in_process(cfg, tmp_path / "run", resume=True)
    train_in_process(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train_in_process(cfg, tmp_path / "run")
    other = config_from_dict(tiny_raw | {"seed": 5, "train": {"epochs": 1, "threads": 1}})
    with pytest.raises(UserError, match=r"config differs .*\(seed\)"):
        train_in_process(other, tmp_path / "run", resume=True)


def test_diverging_loss_stops_without_checkpointing_the_bad_epoch(tmp_path, tiny_raw):
    tiny_raw["optim"] = {"name": "sgd", "lr": 1e12, "momentum": 0.0, "schedule": [[0.0, 1.0], [1.0, 1.0]]}
    with pytest.raises(TrainingDiverged, match="lower optim.lr"):
        train_in_process(config_from_dict(tiny_raw), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_mlflow_gets_params_metrics_and_artifacts_once_per_epoch(tmp_path, tiny_raw):
    from mlflow import MlflowClient
    uri = f"sqlite:///{tmp_path}/m.db"
    tiny_raw["tracking"] = {"enabled": True, "uri": uri, "experiment": "t"}
    tiny_raw["train"]["epochs"] = 2
    cfg = config_from_dict(tiny_raw)
    with pytest.raises(Interrupt):
        train_in_process(cfg, tmp_path / "run", on_epoch=_stop_after(1))
    result = train_in_process(cfg, tmp_path / "run", resume=True)
    client = MlflowClient(uri)
    run = client.get_run(result.tracking_run_id)
    assert run.data.params["attack.eps"] == "[1.0, 0.1]"
    assert "mat_dist.git_commit" in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model.safetensors", "metrics.jsonl", "report.md"} <= artifacts


def test_schedules():
    points = [[0.0, 0.0], [0.4, 1.0], [1.0, 0.0]]
    assert piecewise_linear(points, 0.2) == pytest.approx(0.5)
    assert piecewise_linear(points, 0.4) == pytest.approx(1.0)
    assert piecewise_linear(points, 0.7) == pytest.approx(0.5)
    assert radius_scale(0.3, 0.15) == pytest.approx(0.5)
    assert radius_scale(0.3, 0.9) == 1.0 and radius_scale(0.0, 0.0) == 1.0


def test_union_metric_counts_examples_robust_in_every_norm(tmp_path, tiny_raw, check_recorder):
    """val/robust_all is the per-example union: recounted from the check's own x_adv, an example counts only
    when the final model is right on it clean and under every norm's attack."""
    # Radii at which the three norms break different examples (measured: union 43 of 100, the smallest norm
    # 46), so that a union taken as the smallest per-norm figure, or as any count bound, would be caught.
    tiny_raw["train"]["epochs"] = 5
    tiny_raw["optim"]["lr"] = 0.003
    tiny_raw["eval"].update({"examples": 100, "eps": {"linf": 0.08, "l2": 0.35, "l1": 1.2}})
    rows = train_in_process(config_from_dict(tiny_raw), tmp_path / "run").metrics
    last = rows[-1]
    assert last["val/robust_all"] <= min(last[f"val/robust_{n}"] for n in ("linf", "l2", "l1"))
    assert max(last[f"val/robust_{n}"] for n in ("linf", "l2", "l1")) <= last["val/clean_acc"]
    counts = check_recorder.recount(mat_dist.load_model(tmp_path / "run"), ["linf", "l2", "l1"])
    assert counts["all"] < min(counts[norm] for norm in ("linf", "l2", "l1")), counts  # the norms disagree here
    n = 100
    assert last["val/clean_acc"] == counts["clean"] / n
    for norm in ("linf", "l2", "l1", "all"):
        assert last[f"val/robust_{norm}"] == counts[norm] / n, (norm, last, counts)
