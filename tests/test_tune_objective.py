"""The objective is measured honestly: at the base config's fixed eval radii, whatever a trial trains with."""

from __future__ import annotations

import copy

import pytest
import torch

from mat_dist.core.run_config import config_from_dict
from mat_dist.data import load_splits
from mat_dist.tune.objective import objective_metrics
from mat_dist.tune.space import trial_config
from mat_dist.core.trainer import Trainer


def test_min_clean_acc_makes_a_trial_infeasible() -> None:
    metrics = {"val/robust_all": 0.4, "val/clean_acc": 0.55}
    assert objective_metrics(metrics, None) == {"objective": 0.4, "feasible": 1.0}
    assert objective_metrics(metrics, 0.5) == {"objective": 0.4, "feasible": 1.0}
    assert objective_metrics(metrics, 0.6) == {"objective": 0.0, "feasible": 0.0}
    with pytest.raises(KeyError, match="val/robust_all"):
        objective_metrics({"val/clean_acc": 0.9}, None)


def _measure(cfg, splits, net: torch.nn.Module, seed: int = 123) -> float:
    """The trial's objective for ``net`` under ``cfg``, with the evaluation attack's RNG fixed."""
    trainer = Trainer(cfg, splits, device=torch.device("cpu"))
    trainer.net.load_state_dict(net.state_dict())
    trainer.attack_rng.manual_seed(seed)
    return objective_metrics(trainer.evaluate(), None)["objective"]


def test_tiny_training_radii_do_not_raise_the_objective(tiny_raw: dict) -> None:
    """A trial that shrinks its training radii 100x is still attacked at the base's eval radii.

    The same trained model is scored three ways, with the evaluation attack's
    random starts fixed: by the trial's config (tiny training radii), by the
    base config (other training radii, same eval radii) and, as the dishonest
    objective would, at the trial's own training radii. The first two must be
    equal, and the dishonest one must be clearly higher: otherwise this test
    could not tell the two objectives apart.
    """
    torch.set_num_threads(1)
    base = copy.deepcopy(tiny_raw)
    base["data"]["limit_train"] = 800
    base["optim"]["lr"] = 0.003
    base_cfg = config_from_dict(base)
    tiny_eps = [e / 100 for e in base_cfg.attack.eps]
    trial = trial_config(base, {"attack.eps": tiny_eps})
    assert trial.attack.eps == tiny_eps and trial.eval == base_cfg.eval  # the radii the objective uses are fixed

    splits = load_splits(trial.data.name, val_size=trial.data.val_size, seed=trial.seed,
                         limit_train=trial.data.limit_train)
    trainer = Trainer(trial, splits, device=torch.device("cpu"))
    trainer.fit(lambda metrics, t: None)

    honest = _measure(trial, splits, trainer.net)
    assert honest == _measure(base_cfg, splits, trainer.net)  # training radii play no part in the objective

    own_radii = copy.deepcopy(base)
    own_radii["eval"]["eps"] = {n.value: e for n, e in zip(trial.attack.norms, tiny_eps)}
    dishonest = _measure(config_from_dict(own_radii), splits, trainer.net)
    assert dishonest >= honest + 0.1, (honest, dishonest)
