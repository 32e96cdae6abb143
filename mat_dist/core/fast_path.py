"""The training fast path's switches (config ``train.precision``, ``train.channels_last``, ``train.compile``).

``prepare_model`` gives the module that training calls: the attack's K inner
forwards and the outer loss forward both run through it. The plain network
stays what is saved, loaded and evaluated; the prepared module shares its
parameters, so the optimiser steps one set of weights, kept in fp32.

- bf16: the network's forward runs under ``torch.autocast(dtype=bfloat16)``
  (CPU or CUDA) and hands back fp32 logits, so the cross-entropy and its
  gradient start in fp32, as autocast's own fp32 list would have it; the
  backward follows each forward op's dtype.
- channels_last: the 4-D conv weights in NHWC. The model's input is 5-D
  (B, M, C, H, W); the (B, M*C, H, W) stack made inside the model is turned
  to NHWC by the first conv, which follows its weight's format, and the
  following layers keep it.
- compile: ``torch.compile`` of the network (graphs for the attack's forward,
  whose input needs a gradient, and the outer one, whose input does not).
  The first call compiles, which can take a minute.
"""

from __future__ import annotations

import torch
from torch import nn

from mat_dist.core.run_config import Precision, TrainConfig
from mat_dist.plumbing.errors import UserError


class AutocastForward(nn.Module):
    """``net``'s forward under bf16 autocast, with fp32 logits out (the loss is computed in fp32)."""

    def __init__(self, net: nn.Module, device_type: str) -> None:
        super().__init__()
        self.net = net
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.net(x).float()


def prepare_model(net: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The module training calls for ``net`` (already on ``device``) under ``cfg``'s switches.

    channels_last converts ``net``'s conv weights in place. The returned module
    may be compiled (its state_dict keys then carry an ``_orig_mod.`` prefix):
    checkpoint ``net``, never the returned module.
    """
    if cfg.channels_last:
        for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):
            conv.to(memory_format=torch.channels_last)
    fast = net
    if cfg.precision == Precision.BF16:  # a plain "bf16" too, from Python callers
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; "
                            f"use train.precision=fp32")
        fast = AutocastForward(fast, device.type)
    if cfg.compile:
        fast = torch.compile(fast)
    return fast
