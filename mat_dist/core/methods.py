"""Training methods of the paper as data: a registry of small frozen dataclasses.

Every method is the same recipe with different settings: how the inner
maximisation attacks each input slot (none, PGD under slot m's threat model,
or MSD over all threat models), which gradient drives it (the ensemble loss's
or each sub-model's own), and which network holds the sub-models (one shared
MIMO backbone or M separate networks). The outer minimisation is shared:
theta steps on sum_m w_m CE_m (default) or on max_m CE_m.

The field's one-network methods choose norms per batch instead of per slot:
SAT and E-AT attack each batch in one norm drawn from ``attack.norms``
(uniformly, or by E-AT's rule: ``mat_dist.core.norm_sampling``), AVG and MAX attack
it in every norm and average the N adversarial losses, or keep per example the
norm whose loss is highest (Tramer and Boneh 2019).

Passes per batch (paper Table 6, forward / backward; N = number of norms in attack.norms):
    standard             1 / 1
    at, mat, sat, e_at   K+1 / K+1
    ensemble_at          M(K+1) / M(K+1)   (counted per network)
    mimo_at              K+1 / MK+1
    msd, mat_msd         (1+N)K+1 / K+1
    avg, max             N(K+1) / N(K+1)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mat_dist.core.attacks import GradientMode, SlotAttack, TiedRows, perturb
from mat_dist.plumbing.errors import UserError
from mat_dist.core.models.mimo import ModelKind
from mat_dist.core.norm_sampling import NormRule
from mat_dist.core.threats import Norm, ThreatModel


class OuterLoss(str, enum.Enum):
    SUM = "sum"  # sum_m w_m CE_m: the ensemble loss of the paper's text
    MAX = "max"  # max_m CE_m: the paper's Algorithm 1


class EveryNorm(str, enum.Enum):
    """How AVG and MAX combine a batch attacked in every norm (Tramer and Boneh 2019)."""

    MEAN = "mean"    # the mean of the N adversarial losses (AVG)
    WORST = "worst"  # per example, the adversarial example whose loss is highest (MAX)


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    attacks: bool = True
    msd: bool = False                 # every slot tries every threat model (MSD)
    gradient: GradientMode = GradientMode.ENSEMBLE
    model_kind: ModelKind = ModelKind.MIMO
    single_model: bool = False        # a one-network baseline: M must be 1
    same_norm: bool = False           # every sub-model under the same norm (paper Table 8)
    draw: NormRule | None = None      # one norm per batch, drawn from attack.norms by this rule (SAT, E-AT)
    every_norm: EveryNorm | None = None  # every norm of attack.norms per batch, combined so (AVG, MAX)

    @property
    def per_slot(self) -> bool:
        """Slot m is attacked under one assigned threat model (fixed, rotated or E-AT-sampled per batch)."""
        return self.attacks and not self.msd and self.draw is None and self.every_norm is None

    def check(self, *, num_members: int, norms: Sequence[Norm]) -> None:
        """Raise ``UserError`` if the sub-model count or norm list does not suit this method."""
        if self.single_model and num_members != 1:
            raise UserError(f"method {self.name} trains one network: set model.num_members=1 (got {num_members})")
        if not self.attacks:
            return
        if not self.per_slot:  # attack.norms lists candidates, not one norm per sub-model
            if len(set(norms)) != len(norms) or len(norms) < 2:
                raise UserError(f"method {self.name} needs at least two distinct norms in attack.norms "
                                f"(the candidate norms), got {[n.value for n in norms]}")
            return
        if len(norms) != num_members:
            raise UserError(f"attack.norms has {len(norms)} entries but model.num_members is {num_members}; "
                            f"method {self.name} needs one norm per sub-model")
        if self.same_norm and len(set(norms)) != 1:
            raise UserError(f"method {self.name} needs the same norm for every sub-model, "
                            f"got {[n.value for n in norms]}")

    def passes_per_batch(self, *, steps: int, members: int, norms: int) -> tuple[int, int]:
        """Forward / backward passes of one training batch (paper Table 6): the attack's K steps, then the
        outer step. MSD forwards every candidate norm's step; per-member gradients take one backward per
        sub-model; M separate networks count each network's pass; AVG and MAX attack and train on the batch
        once per norm (``norms`` = len(attack.norms)). The unit of a trial's training cost."""
        if not self.attacks:
            return 1, 1
        if self.every_norm is not None:
            return norms * (steps + 1), norms * (steps + 1)
        forward = (1 + norms) * steps + 1 if self.msd else steps + 1
        backward = members * steps + 1 if self.gradient is GradientMode.PER_MEMBER else steps + 1
        if self.model_kind is ModelKind.SEPARATE:
            return members * forward, members * backward
        return forward, backward

    def slot_attacks(self, threats: Sequence[ThreatModel], num_members: int) -> list[SlotAttack]:
        """What each input slot is attacked with: its own threat model, or all of them (MSD)."""
        if self.msd:
            return [SlotAttack(tuple(threats)) for _ in range(num_members)]
        return [SlotAttack((threat,)) for threat in threats]


METHODS: dict[str, Method] = {
    m.name: m for m in (
        Method("standard", "no attack: clean training", attacks=False),
        Method("at", "adversarial training of one network in one norm (Madry et al.)", single_model=True),
        Method("ensemble_at", "M separate networks, network m adversarially trained in norm m",
               model_kind=ModelKind.SEPARATE),
        Method("mimo_at", "MIMO, slot m attacked with sub-model m's own gradient (eq. 5)",
               gradient=GradientMode.PER_MEMBER),
        Method("mat", "MIMO, slot m attacked in norm m with the ensemble loss's gradient (eq. 6)"),
        Method("mat_same_norm", "MAT with one norm for every sub-model (paper Table 8)", same_norm=True),
        Method("msd", "one network, MSD: per example the worst of the norms' steps (Maini et al.)",
               msd=True, single_model=True),
        Method("mat_msd", "MIMO, every slot runs MSD with the ensemble loss's gradient", msd=True),
        Method("sat", "one network, each batch attacked in one norm of attack.norms drawn uniformly (SAT)",
               single_model=True, draw=NormRule.UNIFORM),
        Method("e_at", "one network, each batch attacked in one norm drawn by 1 - its running robust accuracy "
                       "(E-AT, Croce and Hein 2022)", single_model=True, draw=NormRule.E_AT),
        Method("avg", "one network, each batch attacked in every norm, the losses averaged (Tramer and Boneh)",
               single_model=True, every_norm=EveryNorm.MEAN),
        Method("max", "one network, each batch attacked in every norm, per example the worst norm kept "
                      "(Tramer and Boneh)", single_model=True, every_norm=EveryNorm.WORST),
    )
}


def per_member_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example and head: logits (B, M, K), y (B, M) -> (B, M)."""
    b, m, k = logits.shape
    return F.cross_entropy(logits.reshape(b * m, k), y.reshape(b * m), reduction="none").view(b, m)


def outer_objective(member_losses: torch.Tensor, rule: OuterLoss, weights: torch.Tensor) -> torch.Tensor:
    """The outer loss from the sub-models' batch-mean losses (M,)."""
    if rule is OuterLoss.MAX:
        return member_losses.max()
    return (weights * member_losses).sum()


@dataclass(frozen=True)
class StepResult:
    loss: torch.Tensor            # () the outer objective, with its graph
    member_losses: torch.Tensor   # (M,) batch-mean CE per sub-model, detached
    member_correct: torch.Tensor  # (M,) correct predictions per sub-model on its (adversarial) inputs
    x_adv: torch.Tensor           # (B, M, C, H, W) the inputs the outer step saw, detached
    row_correct: torch.Tensor     # (B, M) bool: row b's prediction in slot m was correct (member_correct's rows)


def adversarial_loss(method: Method, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     threats: Sequence[ThreatModel], steps: int, random_start: bool,
                     outer: OuterLoss, weights: torch.Tensor,
                     generator: torch.Generator | None = None,
                     attack_net: nn.Module | None = None, tied: TiedRows | None = None) -> StepResult:
    """Inner maximisation then the outer loss for one MIMO batch.

    x (B, M, C, H, W) in [0, 1], y (B, M). ``attack_net`` is the network the
    attack differentiates (the bare module under DDP, so that attack steps do
    not trigger gradient all-reduces); it defaults to ``net``. ``tied`` rows
    share one perturbation across their slots (``attack.tie_repeated``).
    """
    attack_net = net if attack_net is None else attack_net  # not `or`: a compiled module has no truth value
    if method.every_norm is not None:
        return _every_norm_loss(method.every_norm, net, attack_net, x, y, threats=threats, steps=steps,
                                random_start=random_start, generator=generator, outer=outer, weights=weights)
    if method.attacks:
        slots = method.slot_attacks(threats, x.shape[1])
        delta = perturb(lambda xa: per_member_ce(attack_net(xa), y), x, slots, steps=steps,
                        gradient=method.gradient, random_start=random_start, generator=generator, tied=tied)
        x = x + delta
    logits = net(x)  # (B, M, K)
    member_losses = per_member_ce(logits, y).mean(dim=0)  # (M,)
    row_correct = (logits.argmax(dim=-1) == y).detach()  # (B, M)
    return StepResult(outer_objective(member_losses, outer, weights), member_losses.detach(), row_correct.sum(dim=0),
                      x.detach(), row_correct)


def _every_norm_loss(combine: EveryNorm, net: nn.Module, attack_net: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     threats: Sequence[ThreatModel], steps: int, random_start: bool,
                     generator: torch.Generator | None, outer: OuterLoss, weights: torch.Tensor) -> StepResult:
    """AVG and MAX (one network, x (B, 1, C, H, W)): the batch attacked under every threat model, each
    adversarial batch forwarded once more for the outer loss; N(K+1) forward and backward passes.

    MAX keeps, per example, the threat model whose adversarial loss is highest; its loss is the mean of
    those worst losses. A row counts as correct when it is correct under every threat model (the union).
    """
    loss_fn = lambda xa: per_member_ce(attack_net(xa), y)  # noqa: E731
    adversarial, losses, correct = [], [], []
    for threat in threats:
        delta = perturb(loss_fn, x, [SlotAttack((threat,))], steps=steps, random_start=random_start,
                        generator=generator)
        logits = net(x + delta)  # (B, 1, K)
        adversarial.append((x + delta).detach())
        losses.append(per_member_ce(logits, y))  # (B, 1)
        correct.append(logits.argmax(dim=-1) == y)
    per_norm = torch.stack(losses)  # (N, B, 1)
    worst = per_norm.detach().argmax(dim=0)  # (B, 1): the threat model each example is weakest under
    if combine is EveryNorm.WORST:
        member_losses = per_norm.gather(0, worst.unsqueeze(0)).squeeze(0).mean(dim=0)  # (1,)
    else:
        member_losses = per_norm.mean(dim=0).mean(dim=0)
    robust_rows = torch.stack(correct).all(dim=0).detach()  # (B, 1): correct under every threat model
    stacked = torch.stack(adversarial)  # (N, B, 1, C, H, W)
    index = worst.view(1, *worst.shape, *[1] * (stacked.dim() - 3)).expand(1, *stacked.shape[1:])
    x_worst = stacked.gather(0, index).squeeze(0)
    return StepResult(outer_objective(member_losses, outer, weights), member_losses.detach(), robust_rows.sum(dim=0),
                      x_worst, robust_rows)
