"""MIMO ensembles: M sub-models in one network, and the deployed ensemble built from them.

Training view: ``forward(x)`` takes x of shape (B, M, C, H, W), row b carrying M
different images (one per sub-model), and returns logits (B, M, K), head m
being sub-model m. ``MimoNet`` stacks the M inputs on the channel axis of one
shared backbone (Havasi et al. 2021); ``SeparateEnsemble`` runs M independent
backbones (the vanilla ensemble baseline) behind the same interface.

Deployed view: ``DeployedEnsemble`` maps one image batch (B, C, H, W) in [0, 1]
to class scores (B, K): the image is copied to all M inputs and the heads are
averaged. Normalisation happens inside the model, so radii stay in pixel units.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mat_dist.plumbing.errors import UserError
from mat_dist.core.models.backbones import BACKBONES


class ModelKind(str, enum.Enum):
    MIMO = "mimo"          # one shared backbone, inputs stacked on channels
    SEPARATE = "separate"  # M independent networks (vanilla ensemble)


class EnsembleOutput(str, enum.Enum):
    SOFTMAX_MEAN = "softmax_mean"  # log of the heads' mean probability (the MIMO paper's rule)
    LOGITS_MEAN = "logits_mean"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything needed to rebuild a trained model; stored inside its checkpoint."""

    backbone: str
    num_members: int
    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: ModelKind = ModelKind.MIMO
    ensemble_output: EnsembleOutput = EnsembleOutput.SOFTMAX_MEAN
    format_version: int = field(default=1)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise UserError(f"unknown backbone {self.backbone!r}; use one of {', '.join(BACKBONES)}")
        if self.num_members < 1:
            raise UserError(f"model.num_members={self.num_members} must be at least 1")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise UserError(f"mean/std need {self.in_channels} values, one per input channel")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        raw = json.loads(text)
        raw["image_size"] = tuple(raw["image_size"])
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        raw["kind"] = ModelKind(raw["kind"])
        raw["ensemble_output"] = EnsembleOutput(raw["ensemble_output"])
        return cls(**raw)


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std as buffers (pixel units in, normalised out)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, -1, 1, 1))  # (1, 1, C, 1, 1)
        self.register_buffer("std", torch.tensor(std).view(1, 1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, M, C, H, W)
        return (x - self.mean) / self.std


class MimoNet(nn.Module):
    """M sub-models sharing one backbone: M*C input channels, M*K output logits."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        m, c, k = spec.num_members, spec.in_channels, spec.num_classes
        self.normalize = Normalize(spec.mean, spec.std)
        self.backbone = BACKBONES[spec.backbone].build(m * c, m * k, spec.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, m = x.shape[:2]
        stacked = self.normalize(x).reshape(b, m * x.shape[2], *x.shape[3:])  # (B, M*C, H, W)
        return self.backbone(stacked).view(b, m, -1)  # (B, M, K)


class SeparateEnsemble(nn.Module):
    """M independent networks, one per input slot: the vanilla ensemble baseline."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.normalize = Normalize(spec.mean, spec.std)
        build = BACKBONES[spec.backbone].build
        self.members = nn.ModuleList(
            build(spec.in_channels, spec.num_classes, spec.image_size) for _ in range(spec.num_members)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)  # (B, M, C, H, W)
        return torch.stack([net(z[:, i]) for i, net in enumerate(self.members)], dim=1)  # (B, M, K)


def build_model(spec: ModelSpec) -> nn.Module:
    """The training-view network of ``spec``: x (B, M, C, H, W) -> logits (B, M, K)."""
    return SeparateEnsemble(spec) if spec.kind is ModelKind.SEPARATE else MimoNet(spec)


def ensemble_scores(logits: torch.Tensor, rule: EnsembleOutput) -> torch.Tensor:
    """Combine head logits (B, M, K) into the ensemble's class scores (B, K).

    SOFTMAX_MEAN returns log(mean_m softmax(logits_m)), a log-probability, so
    cross-entropy on it is the NLL of the deployed prediction.
    """
    if rule is EnsembleOutput.LOGITS_MEAN:
        return logits.mean(dim=1)
    return torch.logsumexp(logits.log_softmax(dim=-1), dim=1) - math.log(logits.shape[1])


def _copy_to_members(x: torch.Tensor, num_members: int) -> torch.Tensor:
    return x.unsqueeze(1).expand(-1, num_members, *x.shape[1:])  # (B, C, H, W) -> (B, M, C, H, W)


class DeployedEnsemble(nn.Module):
    """The model as users deploy it: images (B, C, H, W) in [0, 1] -> class scores (B, K).

    Every head sees the same image; scores follow the spec's ensemble rule.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.spec: ModelSpec = net.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(_copy_to_members(x, self.spec.num_members))  # (B, M, K)
        return ensemble_scores(logits, self.spec.ensemble_output)

    def member(self, index: int) -> SubModel:
        """Sub-model ``index`` as a module of its own (image copied to all inputs, head ``index`` read)."""
        if not 0 <= index < self.spec.num_members:
            raise UserError(f"sub-model {index} does not exist; the model has {self.spec.num_members}")
        return SubModel(self.net, index)


class SubModel(nn.Module):
    """One head of the ensemble: images (B, C, H, W) -> that head's logits (B, K)."""

    def __init__(self, net: nn.Module, index: int) -> None:
        super().__init__()
        self.net = net
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_copy_to_members(x, self.net.spec.num_members))[:, self.index]
