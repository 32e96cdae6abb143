"""mat-dist: adversarially trained MIMO ensembles (MAT) against l_inf, l_2 and l_1 attacks at once.

Public API beside the ``matd`` command line:

    model = mat_dist.load_model("runs/mnist5k-mat")           # deployed ensemble, eval mode
    scores = model(images)                                     # (N, C, H, W) in [0, 1] -> (N, K)
    head = mat_dist.load_model("runs/mnist5k-mat", member=0)   # one sub-model's logits
    summary = mat_dist.evaluate(net, data="mnist5k", suite="field")  # any model: union robustness, intervals
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def load_model(path: str | os.PathLike, *, member: int | None = None):
    """The trained model at ``path`` (weights file, checkpoint folder or run folder) as a plain
    ``torch.nn.Module`` in eval mode: images (N, C, H, W) in [0, 1] -> class scores (N, K),
    the log of the heads' mean probability or the mean logits, as the model was configured.
    ``member=m`` returns sub-model m's logits instead."""
    from mat_dist.checkpoint import load_model as _load_model

    return _load_model(path, member=member)


def __getattr__(name: str):
    """``mat_dist.evaluate`` without importing it first: the evaluator package, callable as the API."""
    if name == "evaluate":
        import importlib

        return importlib.import_module("mat_dist.evaluate")
    raise AttributeError(f"module 'mat_dist' has no attribute {name!r}")
