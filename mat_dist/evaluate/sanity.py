"""Signs of gradient masking, reported as warnings (auto-attack's checks.py, Athalye et al. 2018).

- a model near chance on clean images: its robust figures mean nothing, and
  the checks below cannot tell masking from a model that never learnt;
- gradients that are zero, or that change between two identical calls (a
  randomised model) or under a tiny input change (shattered gradients);
- a black-box attack beating every white-box attack of its norm;
- robust accuracy that does not fall towards 0 as the radius grows, or that
  rises with more attack steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mat_dist.evaluate.registry import ATTACKS


CHANCE_FACTOR = 2.0  # clean accuracy below this many times chance (20% for 10 classes): the model has not learnt


def chance_warnings(summary: dict[str, Any], *, num_classes: int) -> list[str]:
    """A model whose clean accuracy is near chance (below ``CHANCE_FACTOR`` / K): nothing else can be judged."""
    chance = 1.0 / num_classes
    if summary["clean"] >= CHANCE_FACTOR * chance:
        return []
    return [f"clean accuracy {100 * summary['clean']:.1f}% is near chance ({100 * chance:.0f}% for {num_classes} "
            f"classes): the model has not learnt the task, so its robust accuracy means nothing and gradient "
            f"masking cannot be judged; train it longer or check its data and normalisation"]


def gradient_warnings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> list[str]:
    """Check the input gradient of the cross-entropy on a few examples."""
    warnings: list[str] = []
    x = x[:64].clone()
    y = y[:64]
    if len(x) == 0:
        return warnings

    def grad_at(inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.clone().requires_grad_(True)
        loss = F.cross_entropy(model(inputs), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, inputs)
        return g.reshape(len(g), -1)

    g1, g2 = grad_at(x), grad_at(x)
    zero = (g1.abs().amax(dim=1) == 0).float().mean().item()
    if zero > 0.5:
        warnings.append(f"the loss gradient is exactly zero for {100 * zero:.0f}% of the checked examples: "
                        f"gradient-based attacks cannot work (masked or saturated gradients)")
    if not torch.allclose(g1, g2, rtol=1e-4, atol=1e-8):
        warnings.append("two identical gradient calls differ: the model is randomised; use EOT attacks")
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * 1e-3
    g3 = grad_at((x + noise).clamp(0, 1))
    cos = F.cosine_similarity(g1, g3, dim=1, eps=1e-20)
    nonzero = g1.abs().amax(dim=1) > 0
    if nonzero.any() and cos[nonzero].median().item() < 0.5:
        warnings.append(f"the gradient changes direction under a 1e-3 input change (median cosine "
                        f"{cos[nonzero].median().item():.2f}): gradients look random or shattered")
    return warnings


def black_box_warnings(summary: dict[str, Any], attack_info: dict[str, dict[str, Any]], margin: float) -> list[str]:
    """A black-box attack of norm p below every white-box attack of p (by more than ``margin``)."""
    warnings = []
    accs = summary["attacks"]
    for name, info in attack_info.items():
        if ATTACKS[info["attack"]].white_box:
            continue
        white = [accs[a] for a, i in attack_info.items()
                 if i["norm"] == info["norm"] and ATTACKS[i["attack"]].white_box]
        if white and accs[name] < min(white) - margin:
            warnings.append(f"black-box {name} ({100 * accs[name]:.1f}%) beats every white-box {info['norm']} attack "
                            f"(best {100 * min(white):.1f}%): a sign of gradient masking")
    return warnings


def curve_warnings(points: list[dict[str, Any]], *, max_final_accuracy: float, tolerance: float) -> list[str]:
    warnings = []
    for curve in ("steps", "radius"):
        for attack in dict.fromkeys(p["attack"] for p in points if p["curve"] == curve):
            pts = [p for p in points if p["curve"] == curve and p["attack"] == attack]
            accs = [p["robust_accuracy"] for p in pts]
            rises = [(a, b) for a, b in zip(accs, accs[1:]) if b > a + tolerance]
            if rises:
                what = "more steps" if curve == "steps" else "a larger radius"
                warnings.append(f"{attack}: robust accuracy rises with {what} "
                                f"({100 * rises[0][0]:.1f}% -> {100 * rises[0][1]:.1f}%): a sign of gradient masking")
            if curve == "radius" and accs and accs[-1] > max_final_accuracy:
                warnings.append(f"{attack}: robust accuracy is still {100 * accs[-1]:.1f}% at radius "
                                f"{pts[-1]['x']:g}; it should fall towards 0 as the radius grows")
    return warnings
