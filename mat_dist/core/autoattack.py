"""AutoAttack (pyautoattack 0.2) behind the evaluator's adapter signature; the per-epoch check
(``epoch_check``) runs its APGD too, which is why it stands with the method and not with the evaluator.

The original research code ran AutoAttack at the library's default radius
(0.3) instead of the evaluated one; here the radius is passed explicitly and
checked on every sub-attack before anything runs (``check_radius``), and the
gate re-checks every output anyway. For l_1 the APGD attacks run with
``use_largereps`` (Croce & Hein 2021, "Mind the box": l_1-APGD), as the
library's standard l_1 version does.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from mat_dist.core.threats import Norm

AA_NORMS: dict[Norm, str] = {Norm.LINF: "Linf", Norm.L2: "L2", Norm.L1: "L1"}
# APGD's large-radius schedule, which "Mind the box" (Croce & Hein 2021) uses for l_1 only.
LARGE_EPS_STEPS: dict[Norm, bool] = {Norm.LINF: False, Norm.L2: False, Norm.L1: True}

AUTOATTACK_DEFAULTS: dict[str, Any] = {
    "version": "standard",   # standard: APGD-CE, APGD-T, FAB-T, Square with the library's budgets
    "attacks": None,         # for version custom: a subset of apgd-ce, apgd-t, fab-t, square, apgd-dlr, fab
    "n_iter": 100,           # custom only: APGD iterations
    "n_restarts": 1,         # custom only: APGD-CE restarts
    "n_target_classes": 9,   # custom only: APGD-T / FAB-T target classes
    "square_queries": 5000,  # custom only
}
CUSTOM_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def is_full_strength(params: Mapping[str, Any]) -> bool:
    """True for AutoAttack at the library's full budget: the standard version, or APGD-CE and APGD-T with
    at least 100 iterations and all 9 target classes (the field's union protocol)."""
    if str(params.get("version")) == "standard":
        return True
    attacks = set(params.get("attacks") or ())
    return {"apgd-ce", "apgd-t"} <= attacks and int(params.get("n_iter", 0)) >= 100 \
        and int(params.get("n_target_classes", 0)) >= 9


def build(model: nn.Module, *, norm: Norm, eps: float, params: Mapping[str, Any], seed: int):
    """An ``AutoAttack`` at radius ``eps`` configured from the suite's parameters."""
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    device = next(model.parameters()).device
    version = str(params["version"])
    attacks = list(params["attacks"]) if params["attacks"] else None
    adversary = AutoAttack(model, norm=AA_NORMS[norm], eps=float(eps), version=version,
                           attacks=attacks if version == "custom" else None, seed=seed, device=device)
    if version == "custom":
        largereps = LARGE_EPS_STEPS[norm]
        adversary.apgd = APGDAttack(model, n_iter=int(params["n_iter"]), n_restarts=int(params["n_restarts"]),
                                    eps=float(eps), norm=AA_NORMS[norm], seed=seed, device=device,
                                    use_largereps=largereps, logger=adversary.logger)
        adversary.apgd_targeted = APGDAttack_targeted(
            model, n_iter=int(params["n_iter"]), n_restarts=1, eps=float(eps), norm=AA_NORMS[norm], seed=seed,
            device=device, n_target_classes=int(params["n_target_classes"]), use_largereps=largereps,
            logger=adversary.logger)
        adversary.fab.n_restarts = 1
        adversary.fab.n_target_classes = int(params["n_target_classes"])
        adversary.square.n_queries = int(params["square_queries"])
    adversary.verbose = False
    adversary.logger.setLevel(logging.WARNING)
    check_radius(adversary, float(eps))
    return adversary


def check_radius(adversary: Any, eps: float) -> None:
    """Refuse to run an AutoAttack whose sub-attacks hold another radius than the evaluated one."""
    for name in ("apgd", "apgd_targeted", "fab", "square"):
        held = getattr(adversary, name).eps if name != "fab" else adversary.fab.eps
        if abs(float(held) - eps) > 1e-12 or abs(float(adversary.epsilon) - eps) > 1e-12:
            raise RuntimeError(f"AutoAttack's {name} holds eps={held}, not the evaluated eps={eps}")


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: Norm, eps: float,
               params: Mapping[str, Any], seed: int) -> torch.Tensor:
    adversary = build(model, norm=norm, eps=eps, params=params, seed=seed)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=max(len(x), 1))
    return x_adv.detach()
