"""A short MAT run on the real MNIST-5k digits learns robustness that standard training lacks.

Settings: all 3,500 training images, 4 epochs, K=5, learning rate ramped to
1e-3 over the first 10% of steps then flat, training radii (l_1 10, l_2 2.0,
l_inf 0.2) ramped up over the first half of the steps. The per-epoch check
runs PGD-10 on 200 validation images at those radii, where standard training
has collapsed.

Measured on 2 CPU cores (torch 2.13.0, 2026-11-25), final epoch:
    standard  clean 92.0  l_inf  7.0  l_2 30.0  l_1 43.0  all 7.0
    mat       clean 93.5  l_inf 35.5  l_2 57.0  l_1 60.5  all 33.0
The thresholds below sit well under these margins (+28, +27, +17.5, +26).
"""

import pytest

from mat_dist.config import load_config
from mat_dist.training.in_process import train_in_process

SHORT = ["tracking.enabled=false", "train.epochs=4", "attack.steps=5", "attack.warmup=0.5",
         "optim.schedule=[[0.0,0.2],[0.1,1.0],[1.0,1.0]]",
         "attack.eps=[10.0,2.0,0.2]", "attack.alpha=[4.0,1.0,0.1]",
         "eval.examples=200", "eval.steps=10", "eval.eps={linf: 0.2, l2: 2.0, l1: 10.0}"]


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("learning")
    return {method: train_in_process(load_config("mnist5k-mat", SHORT + [f"method.name={method}"]),
                                     out / method).metrics[-1]
            for method in ("standard", "mat")}


def test_mat_beats_standard_training_on_every_norm(short_runs):
    std, mat = short_runs["standard"], short_runs["mat"]
    for norm in ("linf", "l2", "l1"):
        assert mat[f"val/robust_{norm}"] >= std[f"val/robust_{norm}"] + 0.10, norm
    assert mat["val/robust_all"] >= std["val/robust_all"] + 0.15


def test_mat_keeps_clean_accuracy_well_above_chance(short_runs):
    assert short_runs["mat"]["val/clean_acc"] >= 0.80
