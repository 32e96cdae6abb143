"""The field's multi-norm methods (SAT, E-AT, AVG, MAX) and MAT with E-AT's sampling: the norm draws and
their place in the training loop. Pass counts and MAX's choice are in test_methods.py."""

import copy
import math

import pytest
import torch

from mat_dist.core.run_config import config_from_dict, load_config
from mat_dist.plumbing.errors import UserError
from mat_dist.core.norm_sampling import NormRule, NormSampler
from mat_dist.core.attacks import TiedRows
from mat_dist.core.trainer import Trainer, norm_counts, piecewise_linear
from mat_dist.training.in_process import train_in_process


def _bound(p: float, n: int) -> float:
    """Five standard errors of a frequency over n draws: a draw that follows the rule fails this once in 3.5M."""
    return 5 * math.sqrt(p * (1 - p) / n)


def test_e_at_draws_each_norm_in_proportion_to_one_minus_its_running_robust_accuracy():
    sampler = NormSampler(NormRule.E_AT, num_norms=3, num_slots=1, seed=0)
    sampler.add(torch.tensor([20.0, 60.0, 45.0]), torch.tensor([100.0, 100.0, 50.0]))  # l_1 20%, l_2 60% robust
    sampler.add(torch.tensor([0.0, 0.0, 45.0]), torch.tensor([0.0, 0.0, 50.0]))  # l_inf: 90 of 100 over two batches
    expected = torch.tensor([0.8, 0.4, 0.1], dtype=torch.float64) / 1.3
    torch.testing.assert_close(sampler.probabilities(), expected)
    n = 20_000
    draws = torch.tensor([sampler.assign(b)[0] for b in range(n)])
    for index, p in enumerate(expected.tolist()):
        assert abs(float((draws == index).float().mean()) - p) < _bound(p, n)


def test_e_at_draws_every_norm_equally_until_each_has_a_figure():
    sampler = NormSampler(NormRule.E_AT, num_norms=2, num_slots=4, seed=1)
    sampler.add(torch.tensor([0.0, 0.0]), torch.tensor([40.0, 0.0]))  # l_1 at 0%, l_inf never attacked
    assert sampler.probabilities().tolist() == [0.5, 0.5]
    n = 5_000
    draws = torch.tensor([sampler.assign(b) for b in range(n)]).flatten()  # 4 slots per batch, drawn apart
    assert abs(float((draws == 1).float().mean()) - 0.5) < _bound(0.5, 4 * n)
    assert NormSampler(NormRule.E_AT, num_norms=3, num_slots=1, seed=0).probabilities().tolist() == [1 / 3] * 3


def test_uniform_draws_ignore_accuracies_and_a_restored_sampler_draws_the_same_norms():
    sampler = NormSampler(NormRule.UNIFORM, num_norms=3, num_slots=1, seed=4)
    sampler.add(torch.tensor([99.0, 0.0, 0.0]), torch.tensor([100.0, 0.0, 0.0]))
    assert sampler.probabilities().tolist() == [1 / 3] * 3
    e_at = NormSampler(NormRule.E_AT, num_norms=3, num_slots=2, seed=2)
    for b in range(7):
        correct, seen = norm_counts(e_at.assign(b), torch.rand(8, 2) > 0.4, None, 3)
        e_at.add(correct, seen)
    state = e_at.state_dict()
    ahead = [e_at.assign(b) for b in range(7, 40)]
    restored = NormSampler(NormRule.E_AT, num_norms=3, num_slots=2, seed=2)
    restored.load_state_dict(state)
    assert [restored.assign(b) for b in range(7, 40)] == ahead


def _one_network(tiny, method):
    raw = copy.deepcopy(tiny)
    raw["method"]["name"] = method
    raw["model"]["num_members"] = 1
    raw["attack"].update(norms=["l1", "l2", "linf"], eps=[3.0, 1.0, 0.1], alpha=[1.0, 0.5, 0.05])
    return raw


@pytest.mark.parametrize("method", ["sat", "e_at", "avg", "max"])
def test_each_field_method_trains_an_epoch_and_counts_its_passes(tiny_raw, tmp_path, method):
    raw = _one_network(tiny_raw, method)
    raw["train"]["epochs"] = 1
    cfg = config_from_dict(raw)
    result = train_in_process(cfg, tmp_path / "run")
    line = result.metrics[-1]
    batches = 320 // 32
    per_batch = {"sat": 3, "e_at": 3, "avg": 9, "max": 9}[method] * 2  # K=2: (K+1) or N(K+1), fwd + bwd
    assert line["train/passes"] == batches * per_batch
    assert math.isfinite(line["train/loss"]) and 0 <= line["val/robust_all"] <= line["val/clean_acc"]
    if method in ("sat", "e_at"):  # every batch drew one norm: the shares cover the epoch
        shares = [line[f"norms/share_{n}"] for n in ("l1", "l2", "linf")]
        assert sum(shares) == pytest.approx(1.0)
    if method == "e_at":
        assert any(f"norms/train_robust_{n}" in line for n in ("l1", "l2", "linf"))


def test_mat_with_e_at_sampling_draws_per_slot_and_records_the_attacked_norms(tiny_raw):
    tiny_raw["attack"]["eat_sampling"] = True
    cfg = config_from_dict(tiny_raw)
    from mat_dist.data import load_splits

    trainer = Trainer(cfg, load_splits(cfg.data.name, val_size=100, seed=0, limit_train=320))
    assert trainer.norm_sampler.rule is NormRule.E_AT
    line = trainer.train_epoch(0)
    seen = trainer.norm_sampler.seen
    # every row of every slot counted once, under the norm its slot drew: 32 rows per slot-batch drawn
    drawn = torch.tensor([line["norms/share_l2"], line["norms/share_linf"]]) * 10 * 2
    assert seen.tolist() == pytest.approx((drawn * 32).tolist())
    assert float(seen.sum()) == 320 * 2


def test_e_at_counts_tied_rows_under_the_norm_they_were_attacked_in():
    """Tied rows (attack.tie_repeated) carry one perturbation in every slot, under the tied slot's norm: all their
    slots count there, the other rows under their own slot's norm."""
    row_correct = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)  # (B=4, M=3)
    tied = TiedRows(rows=torch.tensor([False, True, False, True]), threat_slot=2)
    correct, seen = norm_counts([0, 1, 1], row_correct, tied, num_norms=3)  # slot 2 drew norm 1 too
    # untied rows 0 and 2: slot 0 -> norm 0 (1 of 2), slots 1 and 2 -> norm 1 (0 + 2 of 4);
    # tied rows 1 and 3: every slot under slot 2's norm 1 (3 + 2 of 6)
    assert correct.tolist() == [1.0, 7.0, 0.0] and seen.tolist() == [2.0, 10.0, 0.0]
    assert norm_counts([2, 0, 1], row_correct, None, 3)[1].tolist() == [4.0, 4.0, 4.0]


def test_field_methods_refuse_what_they_cannot_train(tiny_raw):
    raw = _one_network(tiny_raw, "e_at")
    raw["model"]["num_members"] = 2
    with pytest.raises(UserError, match="method e_at trains one network"):
        config_from_dict(raw)
    raw = _one_network(tiny_raw, "avg")
    raw["attack"].update(norms=["linf"], eps=[0.1], alpha=[0.05])
    with pytest.raises(UserError, match="at least two distinct norms"):
        config_from_dict(raw)
    raw = _one_network(tiny_raw, "sat")
    raw["attack"]["rotate_norms"] = True
    with pytest.raises(UserError, match="rotate_norms needs a method with one norm per sub-model"):
        config_from_dict(raw)
    tiny_raw["attack"].update(eat_sampling=True, rotate_norms=True)
    with pytest.raises(UserError, match="turn one off"):
        config_from_dict(tiny_raw)


def test_the_e_at_learning_rate_schedule_holds_a_third_then_divides_by_ten_twice():
    cfg = load_config("mnist5k-paper-mat", ["optim.schedule=e_at", "train.epochs=3"])
    factors = [piecewise_linear(cfg.optim.schedule, step / 300) for step in range(300)]
    assert factors[:100] == [1.0] * 100 and factors[100:200] == [0.1] * 100 and factors[200:] == [0.01] * 100
    with pytest.raises(UserError, match="optim.schedule"):
        load_config("mnist5k-paper-mat", ["optim.schedule=cosine"])
