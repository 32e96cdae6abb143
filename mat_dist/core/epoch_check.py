"""The per-epoch check: the deployed ensemble's clean and robust accuracy on held-out validation images.

Two attacks can make the check (``eval.attack``):

* ``pgd``: mat-dist's own PGD, K = ``eval.steps``, step 2.5 eps / K (Madry et
  al.). Cheap, and at the field's radii far too optimistic: on MNIST-5k at
  (0.3, 2, 10) PGD-20 gave MAT's l_inf 22.2% where AutoAttack gave 2.0%, and
  single-norm AT's l_1 64.7% against 21.0%.
* ``apgd``: AutoAttack's APGD-CE then APGD-T (``eval.targets`` target classes)
  per norm, ``eval.steps`` iterations each, l_1 with the l_1-APGD schedule of
  "Mind the box". This is the check to select on (best checkpoint, search
  objective): a selection on PGD rewards what PGD cannot see through.

Either way an image counts as robust to a norm only if it is classified
correctly both clean and attacked, and ``val/robust_all`` is the per-example
union over the norms. Under DDP each rank checks its share of the images and
the counts are summed, so every rank returns the same figures.
"""

from __future__ import annotations

import enum
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mat_dist.core.attacks import SlotAttack, perturb
from mat_dist.core.models.mimo import DeployedEnsemble, ensemble_scores
from mat_dist.core.threats import Norm, ThreatModel, make_threat


class ValidationAttack(str, enum.Enum):
    PGD = "pgd"    # mat-dist's PGD: fast, optimistic at large radii
    APGD = "apgd"  # AutoAttack's APGD-CE + APGD-T: the check to select a checkpoint or a config on


class Selection(str, enum.Enum):
    LAST = "last"  # the final model is the last epoch's
    BEST = "best"  # the final model is the epoch with the highest val/robust_all (Rice et al. 2020)


def eval_threat(norm: Norm, eps: float, steps: int) -> ThreatModel:
    """PGD threat model of the per-epoch check: step size 2.5 eps / K (Madry et al.)."""
    return make_threat(norm, eps=eps, alpha=2.5 * eps / steps)


def pgd_attack(deployed: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, steps: int,
               generator: torch.Generator) -> torch.Tensor:
    """x_adv of PGD-``steps`` on the deployed ensemble's cross-entropy."""
    loss_fn = lambda xa: F.cross_entropy(deployed(xa[:, 0]), y, reduction="none").unsqueeze(1)  # noqa: E731
    slot = SlotAttack((eval_threat(norm, eps, steps),))
    delta = perturb(loss_fn, x.unsqueeze(1), [slot], steps=steps, generator=generator)
    return x + delta[:, 0]


def apgd_attack(deployed: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, steps: int,
                targets: int, seed: int) -> torch.Tensor:
    """x_adv of APGD-CE then APGD-T (AutoAttack) on the deployed ensemble.

    AutoAttack seeds torch's global generator; the caller's random state (the
    training data order of later epochs, a resumed run's) is kept as it was.
    """
    from mat_dist.core.autoattack import AUTOATTACK_DEFAULTS, autoattack

    params = {**AUTOATTACK_DEFAULTS, "version": "custom", "attacks": ["apgd-ce", "apgd-t"],
              "n_iter": steps, "n_target_classes": targets}
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return autoattack(deployed, x, y, norm=norm, eps=eps, params=params, seed=seed)


def robust_counts(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: dict[Norm, float], *,
                  attack: ValidationAttack, steps: int, targets: int, generator: torch.Generator,
                  seed: int) -> dict[str, torch.Tensor]:
    """Counts (not shares) of correct images: clean, per head clean, robust per norm and to all norms.

    ``net`` is the training-view MIMO network; it is put in eval mode for the
    check and back in train mode afterwards.
    """
    m = net.spec.num_members
    deployed = DeployedEnsemble(net).eval()
    counts: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        member_logits = net(x.unsqueeze(1).expand(-1, m, *x.shape[1:]))
        clean_ok = ensemble_scores(member_logits, net.spec.ensemble_output).argmax(1) == y
    counts["val/clean_acc"] = clean_ok.sum()
    for j in range(m):
        counts[f"val/clean_acc_m{j}"] = (member_logits[:, j].argmax(1) == y).sum()
    robust_all = clean_ok.clone()  # per example: robust to every norm's attack (the union)
    run: Callable[[Norm, float], torch.Tensor]
    if attack is ValidationAttack.APGD:
        run = lambda norm, e: apgd_attack(deployed, x, y, norm, e, steps, targets, seed)  # noqa: E731
    else:
        run = lambda norm, e: pgd_attack(deployed, x, y, norm, e, steps, generator)  # noqa: E731
    for norm, e in eps.items():
        x_adv = run(norm, e).detach()
        with torch.no_grad():
            robust = clean_ok & (deployed(x_adv).argmax(1) == y)
        counts[f"val/robust_{norm.value}"] = robust.sum()
        robust_all &= robust
    counts["val/robust_all"] = robust_all.sum()
    net.train()
    return counts


def describe_check(attack: ValidationAttack, steps: int, targets: int) -> str:
    """How reports name the check: 'PGD-20' or 'APGD-CE + APGD-T (3 targets), 20 iterations'."""
    if attack is ValidationAttack.APGD:
        return f"APGD-CE + APGD-T ({targets} target classes), {steps} iterations per norm"
    return f"PGD-{steps}"
