"""The per-epoch check under APGD, the best-validation checkpoint, rotated norms and tied rows."""

import pytest
import torch
from safetensors.torch import load_file

from evaluate_helpers import tiny_model_path
from mat_dist.plumbing.atomic import read_jsonl
from mat_dist.core.attacks import SlotAttack, TiedRows, perturb
from mat_dist.core.checkpoint import load_checkpoint, save_final_model
from mat_dist.core.run_config import config_from_dict
from mat_dist.plumbing.errors import UserError
from mat_dist.core.models.mimo import DeployedEnsemble
from mat_dist.training.in_process import train_in_process
from mat_dist.core.threats import LinfThreat, L2Threat, Norm
from mat_dist.core.norm_sampling import NormRule, NormSampler
from mat_dist.core.trainer import Trainer


def test_apgd_check_reports_every_norm_and_leaves_the_global_rng_alone(tiny_raw, check_recorder):
    # A trained model (the evaluator tests' tiny one, 89 of 100 right) at radii where the norms break
    # different examples (measured: union 51, the smallest norm 54), so that the per-example recount below
    # tells the union from the smallest per-norm figure.
    tiny_raw["eval"].update({"attack": "apgd", "steps": 3, "targets": 2, "examples": 100,
                             "eps": {"linf": 0.07, "l2": 0.5, "l1": 1.5}})
    cfg = config_from_dict(tiny_raw)
    from mat_dist.data import load_splits

    splits = load_splits(cfg.data.name, val_size=cfg.data.val_size, seed=0, limit_train=cfg.data.limit_train)
    trainer = Trainer(cfg, splits)
    trainer.net.load_state_dict(load_file(str(tiny_model_path())))
    before = torch.get_rng_state()
    m = trainer.evaluate()
    assert torch.equal(torch.get_rng_state(), before)  # AutoAttack seeds torch; later epochs must not see it
    for norm in ("linf", "l2", "l1"):
        assert 0.0 <= m["val/robust_all"] <= m[f"val/robust_{norm}"] <= m["val/clean_acc"] <= 1.0
    assert trainer.net.training  # back in train mode after the check
    # Per example, from APGD's own x_adv: the union counts an example only when it is robust in every norm.
    counts = check_recorder.recount(DeployedEnsemble(trainer.net).eval(), ["linf", "l2", "l1"])
    assert counts["all"] < min(counts[norm] for norm in ("linf", "l2", "l1")), counts  # the norms disagree here
    n = 100
    assert m["val/clean_acc"] == counts["clean"] / n
    for norm in ("linf", "l2", "l1", "all"):
        assert m[f"val/robust_{norm}"] == counts[norm] / n, (norm, m, counts)


def test_apgd_finds_at_least_what_pgd_finds_on_a_trained_model(tmp_path, tiny_raw):
    tiny_raw["train"]["epochs"] = 2
    tiny_raw["eval"].update({"examples": 60, "steps": 10})
    trained = train_in_process(config_from_dict(tiny_raw), tmp_path / "run")
    from mat_dist.data import load_splits

    cfg = config_from_dict(tiny_raw)
    splits = load_splits(cfg.data.name, val_size=cfg.data.val_size, seed=0, limit_train=cfg.data.limit_train)
    apgd = config_from_dict({**tiny_raw, "eval": {**tiny_raw["eval"], "attack": "apgd", "targets": 9}})
    trainer = Trainer(apgd, splits)
    trainer.net.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")))
    strong = trainer.evaluate()
    weak = trained.metrics[-1]
    assert strong["val/clean_acc"] == weak["val/clean_acc"]
    for norm in ("linf", "l2", "l1", "all"):
        assert strong[f"val/robust_{norm}"] <= weak[f"val/robust_{norm}"] + 0.02, norm


def _script_the_check(monkeypatch, unions):
    """Replace the per-epoch check: epoch e (1-based) reports the validation union ``unions[e - 1]``."""
    def fake_evaluate(self):
        return {"val/clean_acc": 0.9, "val/robust_linf": 0.6, "val/robust_l2": 0.6, "val/robust_l1": 0.6,
                "val/robust_all": unions[self.progress.epoch]}

    monkeypatch.setattr(Trainer, "evaluate", fake_evaluate)


def test_best_checkpoint_is_the_epoch_whose_validation_union_peaked(tmp_path, tiny_raw, monkeypatch):
    tiny_raw["eval"].update({"attack": "apgd", "select": "best"})
    tiny_raw["train"]["checkpoints_kept"] = 3
    cfg = config_from_dict(tiny_raw)
    _script_the_check(monkeypatch, [0.20, 0.50, 0.30])  # the validation union peaks at epoch 2 of 3
    out = tmp_path / "run"
    train_in_process(cfg, out)
    kept = load_file(str(out / "model.safetensors"))
    epoch2 = load_file(str(out / "checkpoints" / "epoch-0002" / "model.safetensors"))
    epoch3 = load_file(str(out / "checkpoints" / "epoch-0003" / "model.safetensors"))
    assert all(torch.equal(kept[k], epoch2[k]) for k in kept)
    assert any(not torch.equal(kept[k], epoch3[k]) for k in kept)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["best_epoch"] for r in rows] == [1, 2, 2]
    assert "epoch 2 (not the last one)" in (out / "report.md").read_text()
    # The Ray path's copy of the final model reads the best weights from the last checkpoint.
    save_final_model(out / "checkpoints" / "epoch-0003", tmp_path / "final.safetensors")
    final = load_file(str(tmp_path / "final.safetensors"))
    assert all(torch.equal(final[k], epoch2[k]) for k in final)
    assert load_checkpoint(out / "checkpoints" / "epoch-0003").state["best"]["epoch"] == 2


def test_epochs_of_the_radius_warm_up_are_never_selected(tmp_path, tiny_raw, monkeypatch):
    tiny_raw["eval"].update({"attack": "apgd", "select": "best"})
    tiny_raw["attack"]["warmup"] = 0.5  # epochs 1 and 2 of 4 ramp the radii; epoch 2 ends at the full radii
    tiny_raw["train"].update({"epochs": 4, "checkpoints_kept": 4})
    cfg = config_from_dict(tiny_raw)
    _script_the_check(monkeypatch, [0.90, 0.10, 0.30, 0.20])  # a warm-up epoch scores best, as a lucky one can
    out = tmp_path / "run"
    train_in_process(cfg, out)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["radius_scale"] for r in rows] == [0.5, 1.0, 1.0, 1.0]
    assert [r.get("best_epoch") for r in rows] == [None, 2, 3, 3]
    kept = load_file(str(out / "model.safetensors"))
    epoch3 = load_file(str(out / "checkpoints" / "epoch-0003" / "model.safetensors"))
    assert all(torch.equal(kept[k], epoch3[k]) for k in kept)


def test_best_selection_survives_a_resume(tmp_path, tiny_raw, monkeypatch):
    tiny_raw["eval"].update({"attack": "apgd", "select": "best"})
    cfg = config_from_dict(tiny_raw)
    _script_the_check(monkeypatch, [0.5, 0.1, 0.2])

    class Stop(Exception):
        pass

    def stop_at_2(m):
        if m["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train_in_process(cfg, tmp_path / "run", on_epoch=stop_at_2)
    first = load_file(str(tmp_path / "run" / "checkpoints" / "epoch-0001" / "model.safetensors"))
    train_in_process(cfg, tmp_path / "run", resume=True)
    kept = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(kept[k], first[k]) for k in kept)


def test_selecting_on_pgd_is_refused_with_one_line(tiny_raw):
    tiny_raw["eval"]["select"] = "best"
    with pytest.raises(UserError, match="eval.select=best .* set eval.attack=apgd"):
        config_from_dict(tiny_raw)


def test_rotated_norms_give_every_slot_every_norm_over_m_batches(tiny_raw):
    tiny_raw["attack"]["rotate_norms"] = True
    cfg = config_from_dict(tiny_raw)
    from mat_dist.data import load_splits

    trainer = Trainer(cfg, load_splits(cfg.data.name, val_size=100, seed=0, limit_train=320))
    seen = []
    for step in range(4):
        trainer.progress.step = step
        seen.append([t.norm_kind for t in trainer._current_threats()])
    assert seen == [[Norm.L2, Norm.LINF], [Norm.LINF, Norm.L2], [Norm.L2, Norm.LINF], [Norm.LINF, Norm.L2]]
    assert NormSampler(NormRule.ROTATE, num_norms=3, num_slots=3, seed=0).assign(4) == [1, 2, 0]
    tiny_raw["method"]["name"] = "mat_msd"
    with pytest.raises(UserError, match="rotate_norms"):
        config_from_dict(tiny_raw)


def test_tied_rows_share_one_perturbation_along_the_summed_gradient():
    # loss = sum_m <w_m, x_m>: the gradient w.r.t. slot m is w_m, w.r.t. a shared delta sum_m w_m.
    torch.manual_seed(0)
    b, m, d = 4, 3, 16
    x = torch.rand(b, 1, d).clamp(0.3, 0.7).expand(b, m, d).clone()  # every slot the same image
    w = torch.randn(m, d)

    def loss_fn(xa):
        return (xa * w).sum(dim=-1)  # (B, M)

    linf, l2 = LinfThreat(eps=0.1, alpha=0.1), L2Threat(eps=0.5, alpha=0.5)
    slots = [SlotAttack((l2,)), SlotAttack((linf,)), SlotAttack((l2,))]
    rows = torch.tensor([True, False, True, False])
    delta = perturb(loss_fn, x, slots, steps=1, random_start=False, tied=TiedRows(rows=rows, threat_slot=1))
    shared = 0.1 * w.sum(dim=0).sign()  # one l_inf step of size eps from zero, along the summed gradient
    for i in (0, 2):
        for j in range(m):
            torch.testing.assert_close(delta[i, j], shared)
    # untied rows: slot m's own step under its own threat model
    torch.testing.assert_close(delta[1, 1], 0.1 * w[1].sign())
    torch.testing.assert_close(delta[1, 0], 0.5 * w[0] / w[0].norm())
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


def test_tied_rows_need_input_repetition_and_a_mimo_ensemble_gradient(tiny_raw):
    tiny_raw["attack"]["tie_repeated"] = True
    with pytest.raises(UserError, match="input_repetition"):
        config_from_dict(tiny_raw)
    tiny_raw["data"]["input_repetition"] = 0.5
    config_from_dict(tiny_raw)
    tiny_raw["method"]["name"] = "mimo_at"
    with pytest.raises(UserError, match="tie_repeated"):
        config_from_dict(tiny_raw)
