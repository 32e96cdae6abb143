"""mat-dist: adversarially trained MIMO ensembles (MAT) against l_inf, l_2 and l_1 attacks at once.

Public API beside the ``matd`` command line:

    model = mat_dist.load_model("runs/mnist5k-mat")           # deployed ensemble, eval mode
    scores = model(images)                                     # (N, C, H, W) in [0, 1] -> (N, K)
    head = mat_dist.load_model("runs/mnist5k-mat", member=0)   # one sub-model's logits
    summary = mat_dist.evaluate_model(net, data="mnist5k", suite="field")  # any model: union robustness, intervals
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def load_model(path: str | os.PathLike, *, member: int | None = None):
    """The trained model at ``path`` (weights file, checkpoint folder or run folder) as a plain
    ``torch.nn.Module`` in eval mode: images (N, C, H, W) in [0, 1] -> class scores (N, K),
    the log of the heads' mean probability or the mean logits, as the model was configured.
    ``member=m`` returns sub-model m's logits instead."""
    from mat_dist.core.checkpoint import load_model as _load_model

    return _load_model(path, member=member)


def evaluate_model(model, **kwargs) -> dict:
    """Attack ``model`` (an ``nn.Module`` mapping [0, 1] images to logits, or what ``matd evaluate --model``
    takes) with a suite and return the summary: clean, every attack, all_<norm>, all_attacks and their 95%
    intervals. The keywords (data, suite, overrides, examples, workers, cluster, output, weights,
    input_mean, input_std, label, tracking, tracking_uri) are ``mat_dist.evaluate.api.evaluate_model``'s."""
    from mat_dist.evaluate.api import evaluate_model as _evaluate_model

    return _evaluate_model(model, **kwargs)
