"""MIMO ensembles and their backbones."""

from mat_dist.core.models.backbones import BACKBONES, BackboneSpec
from mat_dist.core.models.mimo import (
    DeployedEnsemble,
    EnsembleOutput,
    ModelKind,
    ModelSpec,
    SubModel,
    build_model,
    ensemble_scores,
)

__all__ = [
    "BACKBONES", "BackboneSpec", "DeployedEnsemble", "EnsembleOutput", "ModelKind", "ModelSpec",
    "SubModel", "build_model", "ensemble_scores",
]
