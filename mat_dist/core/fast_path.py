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

``auto`` (the default of ``train.precision`` and ``train.channels_last``)
turns bf16 and channels_last on where the training device computes in bf16
natively (``supports_fast_path``): a CPU with AVX512-BF16 or AMX, a CUDA
device of compute capability 8.0 or later. There they pay (BENCHMARKS.md:
the pair at 0.48x of MAT's fp32 batch time on an AVX512-BF16 EPYC);
elsewhere bf16 is emulated and does not pay, so ``auto`` means fp32 there.
``resolve_fast_path`` turns a config into the ``FastPath`` used, which the
trainer records in every metrics line (``fast_path/*``). Evaluation and the
per-epoch check attack the plain fp32 network whatever the switches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mat_dist.core.run_config import AUTO, Precision, TrainConfig
from mat_dist.plumbing.errors import UserError

# /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 (AMD Zen 4 on, Intel Cooper Lake on) and AMX's
# bf16 tiles (Intel Sapphire Rapids on). AVX512 without them only emulates bf16, which does not pay.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CUDA_BF16_CAPABILITY = (8, 0)  # Ampere on: bf16 tensor cores


def cpu_flags_have_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text lists a native bf16 flag on its (first) ``flags`` line."""
    line = next((ln for ln in cpuinfo.splitlines() if ln.split(":")[0].strip() == "flags"), "")
    flags = set(line.partition(":")[2].split())
    return any(f in flags for f in CPU_BF16_FLAGS)


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell here, so no fast path by default
        return False
    return cpu_flags_have_bf16(text) and torch.backends.mkldnn.is_available()


def supports_fast_path(device: torch.device) -> bool:
    """The capability probe of ``auto``: does ``device`` compute in bf16 natively?"""
    if device.type == "cpu":
        return _cpu_has_bf16()
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= CUDA_BF16_CAPABILITY
    return False


@dataclass(frozen=True)
class FastPath:
    """The switches a training run uses: ``train.*`` with ``auto`` resolved for its device."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    def record(self) -> dict[str, float]:
        """The metrics-line keys that say what ran (``fast_path/<switch>``: 1.0 on, 0.0 off)."""
        return {f"fast_path/{f.name}": float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_record(cls, row: dict[str, Any]) -> FastPath | None:
        """The switches a metrics line records (None: a line from before they were recorded)."""
        keys = {f.name: f"fast_path/{f.name}" for f in fields(cls)}
        if not all(key in row for key in keys.values()):
            return None
        return cls(**{name: bool(row[key]) for name, key in keys.items()})

    def describe(self) -> str:
        on = [name for name, flag in (("bf16 autocast", self.bf16), ("channels_last", self.channels_last),
                                      ("torch.compile", self.compile)) if flag]
        return ", ".join(on) if on else "fp32, no switch"


def resolve_fast_path(cfg: TrainConfig | FastPath, device: torch.device) -> FastPath:
    """The switches ``cfg`` asks for on ``device``: each ``auto`` on where ``supports_fast_path``, else off."""
    if isinstance(cfg, FastPath):
        return cfg
    wants_auto = cfg.precision == Precision.AUTO or cfg.channels_last == AUTO
    capable = supports_fast_path(device) if wants_auto else False
    bf16 = capable if cfg.precision == Precision.AUTO else cfg.precision == Precision.BF16
    channels_last = capable if cfg.channels_last == AUTO else bool(cfg.channels_last)
    return FastPath(bf16=bf16, channels_last=channels_last, compile=cfg.compile)


def to_channels_last(net: nn.Module) -> nn.Module:
    """``net`` with its 4-D conv weights in NHWC, in place (the first conv turns its input's activations NHWC and
    the following layers keep it). Same values, another memory layout: results change by summation order only."""
    for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):
        conv.to(memory_format=torch.channels_last)
    return net


def evaluation_channels_last(setting: bool | str, device: torch.device) -> bool:
    """Whether the evaluator attacks ``net`` with NHWC conv weights (the suite's ``resources.channels_last``).

    ``auto`` is on for a CPU: fp32 APGD there runs at 0.85x (l_inf) to 0.92x (l_1) of the contiguous time with
    identical per-example results (BENCHMARKS.md); off on CUDA, where it was not measured."""
    return device.type == "cpu" if setting == AUTO else bool(setting)


class AutocastForward(nn.Module):
    """``net``'s forward under bf16 autocast, with fp32 logits out (the loss is computed in fp32)."""

    def __init__(self, net: nn.Module, device_type: str) -> None:
        super().__init__()
        self.net = net
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.net(x).float()


def prepare_model(net: nn.Module, cfg: TrainConfig | FastPath, device: torch.device) -> nn.Module:
    """The module training calls for ``net`` (already on ``device``) under ``cfg``'s switches (``auto``
    resolved by ``resolve_fast_path``).

    channels_last converts ``net``'s conv weights in place. The returned module
    may be compiled (its state_dict keys then carry an ``_orig_mod.`` prefix):
    checkpoint ``net``, never the returned module.
    """
    fast_path = resolve_fast_path(cfg, device)
    if fast_path.channels_last:
        to_channels_last(net)
    fast = net
    if fast_path.bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; "
                            f"use train.precision=fp32")
        fast = AutocastForward(fast, device.type)
    if fast_path.compile:
        fast = torch.compile(fast)
    return fast
