"""One PGD loop over threat models, used by every training method and by the evaluator.

The loop attacks M input slots at once (x has shape (B, M, C, H, W)); slot m is
perturbed under its own threat model(s). Two choices make every method of the
paper out of the same loop:

* the gradient: ``ENSEMBLE`` differentiates sum_j CE_j once and hands slice m to
  slot m (MAT, eq. 6: one backward pass for all M); ``PER_MEMBER`` takes slot
  m's gradient from CE_m alone (naive MIMO AT, eq. 5: M backward passes).
* the candidates: one threat model per slot is PGD; several is MSD (Maini et
  al. 2020): each step tries every candidate's step from the current delta and
  keeps, per example and slot, the one with the highest loss (one extra
  forward pass per candidate).

The loss function is the caller's: it maps x_adv (B, M, C, H, W) to
per-example, per-slot losses (B, M). A deployed ensemble under attack is the
case M = 1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mat_dist.core.threats import ThreatModel

LossFn = Callable[[torch.Tensor], torch.Tensor]  # x_adv (B, M, C, H, W) -> losses (B, M)


class GradientMode(str, enum.Enum):
    ENSEMBLE = "ensemble"      # d(sum_j CE_j)/dx: one backward pass (MAT, eq. 6)
    PER_MEMBER = "per_member"  # dCE_m/dx_m: M backward passes (naive MIMO AT, eq. 5)


@dataclass(frozen=True)
class SlotAttack:
    """The threat models slot m may step under: one for PGD, several for MSD."""

    candidates: tuple[ThreatModel, ...]

    @property
    def is_msd(self) -> bool:
        return len(self.candidates) > 1


def input_gradients(losses: torch.Tensor, x_adv: torch.Tensor, mode: GradientMode) -> torch.Tensor:
    """Gradient of the attack loss w.r.t. every slot, shape (B, M, C, H, W).

    Losses are summed over the batch, so row b's gradient is its own loss's
    gradient (rows interact only through BatchNorm batch statistics in train mode).
    """
    if mode is GradientMode.ENSEMBLE:
        (grad,) = torch.autograd.grad(losses.sum(), x_adv)
        return grad
    num_slots = losses.shape[1]
    grad = torch.empty_like(x_adv)
    for m in range(num_slots):
        (g,) = torch.autograd.grad(losses[:, m].sum(), x_adv, retain_graph=m < num_slots - 1)
        grad[:, m] = g[:, m]  # the true gradient: slot m's own loss only
    return grad


@dataclass(frozen=True)
class TiedRows:
    """Rows whose M slots hold one image and share one perturbation: what the deployed ensemble sees.

    The shared delta moves along the gradient of the summed loss with respect to
    it, sum_m dL/dx_m (every slot is x + delta), under slot ``threat_slot``'s
    threat model. Same forward and backward passes as the other rows.
    """

    rows: torch.Tensor  # (B,) bool
    threat_slot: int    # whose threat model the shared delta steps under


def perturb(loss_fn: LossFn, x: torch.Tensor, slots: Sequence[SlotAttack], *, steps: int,
            gradient: GradientMode = GradientMode.ENSEMBLE, random_start: bool = True,
            generator: torch.Generator | None = None, tied: TiedRows | None = None) -> torch.Tensor:
    """Run ``steps`` attack steps on x (B, M, C, H, W) in [0, 1]; return the final delta.

    Every returned delta[:, m] lies in slot m's ball (for MSD: in the ball of
    the candidate that made its last step; for ``tied`` rows: in the tied
    threat model's ball, the same delta in every slot) and x + delta lies in
    [0, 1]. Passes per call: forward K (+ K per MSD candidate), backward K (PGD
    ensemble gradient) or M*K (per-member gradient).
    """
    if len(slots) != x.shape[1]:
        raise ValueError(f"{len(slots)} slot attacks for {x.shape[1]} input slots")
    if tied is not None and (any(slot.is_msd for slot in slots) or gradient is not GradientMode.ENSEMBLE):
        raise ValueError("tied rows need one PGD threat model per slot and the ensemble gradient")
    x = x.detach()
    delta = _start(x, slots, random_start, generator)  # (B, M, C, H, W), updated in place
    if tied is not None:
        delta = _tie(delta, delta[:, tied.threat_slot], tied.rows)
    msd = any(slot.is_msd for slot in slots)
    for _ in range(steps):
        x_adv = (x + delta).requires_grad_(True)
        grad = input_gradients(loss_fn(x_adv), x_adv, gradient)
        with torch.no_grad():
            if msd:
                delta = _msd_step(loss_fn, x, delta, grad, slots, generator)
                continue
            if tied is not None:  # before the per-slot steps change delta in place
                k = tied.threat_slot
                shared = slots[k].candidates[0].step(delta[:, k], grad.sum(dim=1), x[:, k], generator)
            for m, slot in enumerate(slots):
                delta[:, m] = slot.candidates[0].step(delta[:, m], grad[:, m], x[:, m], generator)
            if tied is not None:
                delta = _tie(delta, shared, tied.rows)
    return delta.detach()


def _tie(delta: torch.Tensor, shared: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """delta with ``shared`` (B, C, H, W) in every slot of the rows marked in ``rows`` (B,)."""
    # torch.where, not indexing: boolean indexing would wait for the GPU to count the rows.
    mask = rows.view(-1, *[1] * (delta.dim() - 1))
    return torch.where(mask, shared.unsqueeze(1).expand_as(delta), delta).contiguous()


def _start(x: torch.Tensor, slots: Sequence[SlotAttack], random_start: bool,
           generator: torch.Generator | None) -> torch.Tensor:
    # MSD starts at zero as Maini et al. do: a start inside one candidate's ball
    # would favour that norm. PGD starts uniformly inside its ball (signed).
    if not random_start:
        return torch.zeros_like(x)
    return torch.stack([
        torch.zeros_like(x[:, m]) if slot.is_msd else slot.candidates[0].random_start(x[:, m], generator)
        for m, slot in enumerate(slots)
    ], dim=1)


def _msd_step(loss_fn: LossFn, x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor,
              slots: Sequence[SlotAttack], generator: torch.Generator | None) -> torch.Tensor:
    """MSD's step: every candidate's step from the current delta; per example and slot, the
    one with the highest loss (one forward pass per candidate)."""
    num_candidates = max(len(s.candidates) for s in slots)
    best, best_loss = delta, None
    for c in range(num_candidates):
        candidate = torch.stack([
            slot.candidates[min(c, len(slot.candidates) - 1)].step(delta[:, m], grad[:, m], x[:, m], generator)
            for m, slot in enumerate(slots)
        ], dim=1)  # (B, M, C, H, W)
        loss = loss_fn(x + candidate)  # (B, M)
        if best_loss is None:
            best, best_loss = candidate, loss
            continue
        better = loss >= best_loss  # (B, M); ties go to the later candidate, as in MSD's code
        # torch.where, not best[better] = ...: boolean indexing would wait for the GPU to count the rows.
        best = torch.where(better.view(*better.shape, *[1] * (candidate.dim() - 2)), candidate, best)
        best_loss = torch.maximum(best_loss, loss)
    return best


def cross_gradient_diagnostics(loss_fn: LossFn, x_adv: torch.Tensor,
                               threats: Sequence[ThreatModel]) -> dict[str, torch.Tensor]:
    """How far MAT's ensemble gradient is from each sub-model's true gradient at ``x_adv``.

    Per slot m (paper eq. 7): the true gradient g_m = dCE_m/dx_m, the cross
    gradient c_m = sum_{j != m} dCE_j/dx_m, and the step MAT takes uses g_m + c_m.
    Returns per-slot batch means (M,): ``cross_ratio`` = ||c_m||_2 / ||g_m||_2
    (paper Fig. 1) and ``disagreement`` = E_p between the steps of g_m + c_m and
    g_m under slot m's threat model (paper Fig. 4). Costs M + 1 backward passes.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    losses = loss_fn(x_adv)  # (B, M)
    (ensemble,) = torch.autograd.grad(losses.sum(), x_adv, retain_graph=True)
    true = input_gradients(losses, x_adv, GradientMode.PER_MEMBER)
    cross = ensemble - true
    ratios, disagreements = [], []
    for m, threat in enumerate(threats):
        g, c = true[:, m].flatten(1), cross[:, m].flatten(1)
        ratios.append((c.norm(dim=1) / g.norm(dim=1).clamp_min(1e-12)).mean())
        disagreements.append(threat.step_disagreement(ensemble[:, m], true[:, m]).mean())
    return {"cross_ratio": torch.stack(ratios).detach(), "disagreement": torch.stack(disagreements).detach()}
