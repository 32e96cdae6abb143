"""Shared fixtures: tiny configs on scikit-learn's 8x8 digits, so runs take seconds."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "digits", "val_size": 100, "batch_size": 32, "limit_train": 320},
    "model": {"backbone": "mnist_cnn", "num_members": 2},
    "method": {"name": "mat"},
    "attack": {"steps": 2, "norms": ["l2", "linf"], "eps": [1.0, 0.1], "alpha": [0.5, 0.05]},
    "optim": {"name": "adam", "lr": 0.001, "schedule": [[0.0, 1.0], [1.0, 1.0]]},
    # fp32 pinned: the fast path's auto default turns bf16 on where the CPU has it, which changes the
    # trajectories these tests were written against (not their speed: BENCHMARKS.md); tests of auto unpin it
    "train": {"epochs": 3, "threads": 1, "precision": "fp32", "channels_last": False},
    "eval": {"examples": 40, "steps": 3, "eps": {"linf": 0.1, "l2": 1.0, "l1": 3.0}},
    "tracking": {"enabled": False},
}


@pytest.fixture
def tiny_raw():
    """A fresh copy of the tiny config as plain data (mutable per test)."""
    import copy

    return copy.deepcopy(TINY)


class CheckRecorder:
    """Every adversarial batch the per-epoch check (``mat_dist.core.epoch_check``) computes, with its inputs, so that
    a test can count the check's figures again, per example, from the attacks' outputs."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []  # (norm, x (B, C, H, W), y (B,), x_adv (B, C, H, W)), in call order

    def wrap(self, attack):
        def recording(deployed, x, y, norm, *args, **kwargs):
            x_adv = attack(deployed, x, y, norm, *args, **kwargs)
            self.calls.append((norm, x.clone(), y.clone(), x_adv.detach().clone()))
            return x_adv

        return recording

    def recount(self, model, norms) -> dict[str, int]:
        """Counts of the last check from its x_adv, by ``model`` (images -> scores): robust to a norm when right
        clean and attacked; robust to all when robust to every norm, the same example in each."""
        import torch

        last = self.calls[-len(norms):]
        assert sorted(str(call[0].value) for call in last) == sorted(norms)
        x, y = last[0][1], last[0][2]
        robust = {}
        with torch.no_grad():
            clean = model(x).argmax(1) == y
            for norm, x_in, y_in, x_adv in last:
                assert torch.equal(x_in, x) and torch.equal(y_in, y)  # every norm attacked the same examples
                robust[norm.value] = clean & (model(x_adv).argmax(1) == y)
        union = torch.stack(list(robust.values())).all(dim=0)  # (B,)
        return {"clean": int(clean.sum()), "all": int(union.sum()), **{n: int(r.sum()) for n, r in robust.items()}}


@pytest.fixture
def check_recorder(monkeypatch):
    """A ``CheckRecorder`` on both attacks of the per-epoch check (PGD and APGD)."""
    from mat_dist.core import epoch_check as validation

    recorder = CheckRecorder()
    monkeypatch.setattr(validation, "pgd_attack", recorder.wrap(validation.pgd_attack))
    monkeypatch.setattr(validation, "apgd_attack", recorder.wrap(validation.apgd_attack))
    return recorder
