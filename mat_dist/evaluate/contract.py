"""The contract a model must meet before any attack runs, checked on a few real test images.

A model mat-dist did not train maps images (N, C, H, W) in [0, 1] to logits
(N, classes). What would make its robust accuracy meaningless is refused with
one line (as AutoAttack's ``checks.py`` warns, but here nothing is attacked):

- it fails on the data's images, or returns another shape than (N, classes);
- NaN or infinite outputs;
- outputs that look like probabilities (softmax: rows in [0, 1] summing to 1),
  whose cross-entropy gradients vanish;
- another answer on the same input (a randomised model needs EOT attacks);
- an image's output depends on the other images of the batch (BatchNorm in
  training mode), so attacks on a shard would attack another model;
- no input gradient when white-box attacks are to run.
Zero or shattered gradients are warned about later (``sanity``), as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mat_dist.plumbing.errors import UserError

CHECK_IMAGES = 16       # test images the checks run on
SAME_INPUT_ATOL = 1e-4  # logits of two identical calls may differ by float noise only
PROBABILITY_ATOL = 1e-3


class ContractError(UserError):
    """The model cannot be attacked honestly; nothing was written."""


def check_contract(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                   label: str, needs_gradients: bool) -> None:
    x = images[:CHECK_IMAGES]
    shape = "x".join(map(str, x.shape[1:]))
    try:
        with torch.no_grad():
            first = model(x)
            second = model(x)
    except Exception as err:  # noqa: BLE001 - the user's model: any failure is one line
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ContractError(f"model {label} fails on {len(x)} test images of shape {shape} "
                            f"({type(err).__name__}: {detail[:200]}); it must take (N, {shape}) images in [0, 1]") \
            from None
    if not isinstance(first, torch.Tensor):
        raise ContractError(f"model {label} returns {type(first).__name__}, not a tensor of logits (N, {num_classes})")
    if tuple(first.shape) != (len(x), num_classes):
        raise ContractError(f"model {label} returns shape {tuple(first.shape)} for {len(x)} images; it must "
                            f"return logits of shape ({len(x)}, {num_classes})")
    if not torch.isfinite(first).all():
        raise ContractError(f"model {label} returns NaN or infinite outputs on the test images")
    if looks_like_probabilities(first):
        raise ContractError(f"model {label} returns probabilities (rows in [0, 1] summing to 1); give the logits "
                            f"before the softmax: cross-entropy attacks on probabilities have vanishing gradients")
    if not torch.allclose(first, second, rtol=0, atol=SAME_INPUT_ATOL * (1 + first.abs().max().item())):
        raise ContractError(f"model {label} changes its answer on the same input (dropout or randomness at test "
                            f"time?); a randomised model needs EOT attacks, which this suite does not run")
    with torch.no_grad():
        alone = torch.cat([model(x[i:i + 1]) for i in range(min(len(x), 4))])
    if not torch.allclose(alone, first[:len(alone)], rtol=0, atol=SAME_INPUT_ATOL * (1 + first.abs().max().item())):
        raise ContractError(f"model {label}'s output for an image depends on the other images of the batch "
                            f"(BatchNorm in training mode?); export or save it in eval mode")
    if needs_gradients:
        _check_gradient(model, x, labels[:CHECK_IMAGES], label)


def looks_like_probabilities(outputs: torch.Tensor) -> bool:
    in_unit = bool(((outputs >= -PROBABILITY_ATOL) & (outputs <= 1 + PROBABILITY_ATOL)).all())
    return in_unit and bool(torch.allclose(outputs.sum(dim=1), torch.ones(len(outputs)), atol=PROBABILITY_ATOL))


def _check_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label: str) -> None:
    inputs = x.clone().requires_grad_(True)
    try:
        loss = F.cross_entropy(model(inputs), y)
        (grad,) = torch.autograd.grad(loss, inputs, allow_unused=True)
    except RuntimeError as err:
        raise ContractError(f"model {label} gives no input gradient ({str(err).splitlines()[0][:160]}); white-box "
                            f"attacks need one (an ONNX file runs gradient-free attacks only)") from None
    if grad is None:
        raise ContractError(f"model {label}'s output does not depend on its input through autograd; white-box "
                            f"attacks need an input gradient (an ONNX file runs gradient-free attacks only)")
