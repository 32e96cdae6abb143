"""foolbox 3 attacks behind the adapter signature.

foolbox conventions checked here: the model is wrapped in ``PyTorchModel`` with
``bounds=(0, 1)`` (radii are in pixel units) and must return logits; the
deployed ensemble returns log-probabilities, which are valid logits for
arg-max and cross-entropy. Fixed-radius attacks (PGD) get ``epsilon=eps``;
minimisation attacks (C&W, HopSkipJump, Boundary, salt-and-pepper, EAD,
Brendel-Bethge) get ``early_stop=eps`` and return their raw minimal
adversarials: the evaluator projects those onto the evaluated ball before the
gate (foolbox's own clipping uses the attack's distance, which is not always
the evaluated norm, e.g. salt-and-pepper measures l_2 but is evaluated in l_1).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from mat_dist.core.threats import Norm

FB_PGD_DEFAULTS: dict[str, Any] = {"steps": 20, "rel_stepsize": 0.1, "random_start": True}
CW_DEFAULTS: dict[str, Any] = {"binary_search_steps": 9, "steps": 1000, "stepsize": 0.01,
                               "confidence": 0.0, "initial_const": 0.001}
HSJ_DEFAULTS: dict[str, Any] = {"steps": 64, "initial_gradient_eval_steps": 100,
                                "max_gradient_eval_steps": 10000}
BOUNDARY_DEFAULTS: dict[str, Any] = {"steps": 5000, "spherical_step": 0.01, "source_step": 0.01}
SALTPEPPER_DEFAULTS: dict[str, Any] = {"steps": 1000}
EAD_DEFAULTS: dict[str, Any] = {"binary_search_steps": 9, "steps": 1000, "initial_stepsize": 0.01,
                                "initial_const": 0.001, "regularization": 0.01, "decision_rule": "L1"}
BB_L1_DEFAULTS: dict[str, Any] = {"steps": 1000, "lr": 0.001, "binary_search_steps": 10}


def _fmodel(model: nn.Module):
    import foolbox as fb

    return fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=next(model.parameters()).device)


def _pgd_class(norm: Norm):
    import foolbox as fb

    return {Norm.LINF: fb.attacks.LinfPGD, Norm.L2: fb.attacks.L2PGD, Norm.L1: fb.attacks.L1PGD}[norm]


def _hsj_constraint(norm: Norm) -> str:
    return {Norm.LINF: "linf", Norm.L2: "l2"}[norm]


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: Norm, eps: float,
        params: Mapping[str, Any], seed: int) -> torch.Tensor:
    """foolbox's PGD of ``norm`` at ``eps`` (already clipped to the ball by foolbox)."""
    import foolbox as fb

    attack = _pgd_class(norm)(rel_stepsize=float(params["rel_stepsize"]), steps=int(params["steps"]),
                              random_start=bool(params["random_start"]))
    _, clipped, _ = attack(_fmodel(model), x, fb.criteria.Misclassification(y), epsilons=float(eps))
    return clipped.detach()


def _minimization(build: Callable[[Norm, Mapping[str, Any]], Any]):
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: Norm, eps: float,
            params: Mapping[str, Any], seed: int) -> torch.Tensor:
        import foolbox as fb

        attack = build(norm, params)
        raw = attack.run(_fmodel(model), x, fb.criteria.Misclassification(y), early_stop=float(eps))
        return raw.detach()

    return run


def _cw(norm: Norm, p: Mapping[str, Any]):
    import foolbox as fb

    return fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=int(p["binary_search_steps"]), steps=int(p["steps"]), stepsize=float(p["stepsize"]),
        confidence=float(p["confidence"]), initial_const=float(p["initial_const"]))


def _hsj(norm: Norm, p: Mapping[str, Any]):
    import foolbox as fb

    return fb.attacks.HopSkipJumpAttack(
        steps=int(p["steps"]), initial_gradient_eval_steps=int(p["initial_gradient_eval_steps"]),
        max_gradient_eval_steps=int(p["max_gradient_eval_steps"]), constraint=_hsj_constraint(norm))


def _boundary(norm: Norm, p: Mapping[str, Any]):
    import foolbox as fb

    return fb.attacks.BoundaryAttack(steps=int(p["steps"]), spherical_step=float(p["spherical_step"]),
                                     source_step=float(p["source_step"]))


def _saltpepper(norm: Norm, p: Mapping[str, Any]):
    import foolbox as fb

    return fb.attacks.SaltAndPepperNoiseAttack(steps=int(p["steps"]))


def _ead(norm: Norm, p: Mapping[str, Any]):
    import foolbox as fb

    return fb.attacks.EADAttack(
        binary_search_steps=int(p["binary_search_steps"]), steps=int(p["steps"]),
        initial_stepsize=float(p["initial_stepsize"]), initial_const=float(p["initial_const"]),
        regularization=float(p["regularization"]), decision_rule=str(p["decision_rule"]))


def _bb_l1(norm: Norm, p: Mapping[str, Any]):
    import foolbox as fb

    return fb.attacks.L1BrendelBethgeAttack(steps=int(p["steps"]), lr=float(p["lr"]),
                                            binary_search_steps=int(p["binary_search_steps"]))


cw = _minimization(_cw)
hsj = _minimization(_hsj)
boundary = _minimization(_boundary)
saltpepper = _minimization(_saltpepper)
ead = _minimization(_ead)
bb_l1 = _minimization(_bb_l1)
