"""The gate: the one function that decides whether an attack broke an example.

foolbox's ``FixedEpsilonAttack.__call__`` clips every result again "because we
don't really know what the attack returns"; mat-dist goes one step further and
re-checks every adversarial example from every library here, after the
attack, against the evaluated threat model:

    success = (not clean_correct)
              or (prediction on x_adv != label
                  and ||x_adv - x||_p <= eps * (1 + RADIUS_RTOL) + RADIUS_ATOL
                  and x_adv in [-BOX_TOL, 1 + BOX_TOL] and x_adv finite)

A clean-misclassified example is broken with no perturbation at all: it is
reported as ``success=True`` with ``perturbation_norm=0`` and
``clean_correct=False``, so every union counts it as not robust.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mat_dist.core.threats import Norm, make_threat

RADIUS_RTOL = 1e-4  # float32 round-off of the libraries' own projections
RADIUS_ATOL = 1e-6
BOX_TOL = 1e-6      # pixel units


@dataclass(frozen=True)
class GateResult:
    """Per-example verdicts, each of shape (B,)."""

    success: torch.Tensor          # bool: the example counts as broken
    clean_correct: torch.Tensor    # bool
    flipped: torch.Tensor          # bool: prediction on x_adv differs from the label
    within_radius: torch.Tensor    # bool
    in_box: torch.Tensor           # bool: finite and inside [0, 1] (with BOX_TOL)
    perturbation_norm: torch.Tensor  # float: ||x_adv - x||_p (0 for clean-wrong examples)
    pred_clean: torch.Tensor       # int64
    pred_adv: torch.Tensor         # int64


def perturbation_norm(delta: torch.Tensor, norm: Norm | str) -> torch.Tensor:
    """||delta||_p per example (B,), through the threat model of ``norm``."""
    return make_threat(norm, eps=1.0, alpha=1.0).norm(delta)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Arg-max predictions (B,) of ``model`` on images (B, C, H, W)."""
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]) \
        if len(x) else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def gate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *,
         norm: Norm | str, eps: float, pred_clean: torch.Tensor | None = None) -> GateResult:
    """Re-check attack output ``x_adv`` (B, C, H, W) against the l_``norm`` ball of radius ``eps`` around x."""
    if x_adv.shape != x.shape:
        raise ValueError(f"attack returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    x_adv = x_adv.detach().to(x.dtype)
    pred_clean = predict(model, x) if pred_clean is None else pred_clean
    clean_correct = pred_clean == y
    flat = x_adv.reshape(len(x_adv), -1)  # (B, D)
    finite = torch.isfinite(flat).all(dim=1)
    in_box = finite & (flat >= -BOX_TOL).all(dim=1) & (flat <= 1 + BOX_TOL).all(dim=1)
    safe_adv = torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x_adv, x)  # never feed NaN to the model
    norms = perturbation_norm(safe_adv - x, norm)
    norms = torch.where(finite, norms, torch.full_like(norms, float("inf")))
    within = norms <= eps * (1 + RADIUS_RTOL) + RADIUS_ATOL
    pred_adv = predict(model, safe_adv)
    flipped = pred_adv != y
    success = ~clean_correct | (flipped & within & in_box)
    return GateResult(
        success=success,
        clean_correct=clean_correct,
        flipped=torch.where(clean_correct, flipped, torch.ones_like(flipped)),
        within_radius=within | ~clean_correct,
        in_box=in_box | ~clean_correct,
        perturbation_norm=torch.where(clean_correct, norms, torch.zeros_like(norms)),
        pred_clean=pred_clean,
        pred_adv=torch.where(clean_correct, pred_adv, pred_clean),
    )
