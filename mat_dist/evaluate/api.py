"""``mat_dist.evaluate_model(model, ...)``: the evaluator for any model, from Python.

    import mat_dist
    summary = mat_dist.evaluate_model(net, data="mnist5k", suite="field", workers=2)
    summary["all_attacks"], summary["intervals"]["all_attacks"]   # 0.412, [0.381, 0.444]

``model`` is what ``matd evaluate --model`` takes (a TorchScript, .pt2 or
ONNX file, ``package.module:function``, a mat-dist run folder or checkpoint)
or an ``nn.Module`` object mapping [0, 1] images to logits. The contract checks
and the output folder are those of the command line; without ``output`` the
folder is temporary and removed after the summary is read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mat_dist.evaluate.model_source import ModelSource, parse_source


def evaluate_model(model: nn.Module | str | os.PathLike | ModelSource, *,
                   data: str | tuple[torch.Tensor, torch.Tensor] = "mnist5k", data_root: str | None = None,
                   suite: str = "field", overrides: Sequence[str] = (), examples: int | None = None,
                   workers: int | None = None, cluster: str | os.PathLike | None = None,
                   output: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                   input_mean: Sequence[float] | None = None, input_std: Sequence[float] | None = None,
                   label: str | None = None, tracking: bool = False,
                   tracking_uri: str | None = None) -> dict[str, Any]:
    """Attack ``model`` with ``suite`` and return the summary: clean, every attack, all_<norm>, all_attacks
    (fractions) and ``intervals`` (95% Wilson bounds of each).

    ``data``: a data set name (its first ``examples`` test images, default the suite's count) or
    (images (N, C, H, W) in [0, 1], finite; labels (N,) in 0..K-1, K the width of the model's logits), all
    evaluated unless ``examples`` says fewer.
    ``workers``: CPUs of a local Ray runtime (default: all of this machine's; 0: in this process).
    """
    from mat_dist.evaluate.evaluator import TrackingOptions
    from mat_dist.evaluate.evaluator import evaluate as run
    from mat_dist.evaluate.suite import load_suite

    source = model if isinstance(model, ModelSource) else parse_source(
        model, weights=weights, input_mean=input_mean, input_std=input_std, label=label)
    the_suite = load_suite(suite, list(overrides))
    n_workers = workers if workers is not None else len(os.sched_getaffinity(0))
    tensors = data if isinstance(data, tuple) else None
    dataset = "custom" if tensors is not None else str(data)
    if tensors is not None and examples is None:
        examples = len(tensors[0])  # images given: all of them, not the suite's default count
    folder = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="matd-evaluate-"))
    try:
        result = run(model=source, suite=the_suite, output=folder, dataset=dataset, data_root=data_root,
                     examples=examples, workers=n_workers, cluster=cluster, data=tensors,
                     tracking=TrackingOptions(enabled=tracking, uri=tracking_uri))
        return result.summary
    finally:
        if output is None:
            shutil.rmtree(folder, ignore_errors=True)
