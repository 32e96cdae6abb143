"""mat-dist's own PGD (the one loop of ``mat_dist.core.attacks``) against a deployed model."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mat_dist.core.attacks import SlotAttack, perturb
from mat_dist.core.threats import Norm, make_threat

PGD_DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "rel_alpha": 0.1,        # step size as a share of eps (alpha = rel_alpha * eps)
    "random_start": True,
    "l1_topk": [5, 20],      # k range of the l_1 top-k step (MSD)
}


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: Norm, eps: float,
        params: Mapping[str, Any], seed: int) -> torch.Tensor:
    """PGD on the cross-entropy of ``model`` (images (B, C, H, W) -> scores (B, K)); returns x_adv.

    The deployed ensemble's scores are log-probabilities, so cross-entropy on
    them is the NLL of the deployed prediction (as in ``Trainer.evaluate``).
    """
    threat = make_threat(norm, eps=eps, alpha=params["rel_alpha"] * eps).with_topk(*params["l1_topk"])
    generator = torch.Generator(device=x.device).manual_seed(seed)

    def loss_fn(xa: torch.Tensor) -> torch.Tensor:  # (B, 1, C, H, W) -> (B, 1)
        return F.cross_entropy(model(xa[:, 0]), y, reduction="none").unsqueeze(1)

    delta = perturb(loss_fn, x.unsqueeze(1), [SlotAttack((threat,))], steps=int(params["steps"]),
                    random_start=bool(params["random_start"]), generator=generator)
    return (x + delta[:, 0]).detach()
