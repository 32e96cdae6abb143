"""Short MAT runs learn robustness that standard training lacks, on the 8x8 digits and on the real MNIST-5k.

Default run, the 8x8 digits (sklearn's, about 1,400 training images): M=3 (l_1, l_2, l_inf),
K=3, 6 epochs at lr 3e-3, training and check radii (l_1 3, l_2 1, l_inf 0.1), warm-up 0.3.
The per-epoch check runs PGD-10 on 300 validation images. Measured on 2 CPU cores
(torch 2.13.0, 2026-12-01), final epoch, about 25 s for both runs:
    standard  clean 89.0  l_1 12.3  l_2  1.7  l_inf 36.3  all  1.3
    mat       clean 85.3  l_1 39.7  l_2 18.3  l_inf 62.7  all 18.3
The thresholds (+10 per norm and for the union) sit 7 points or more under these margins
(+27, +17, +26, +17); a 10-point gap at 300 images is outside either side's 95% interval.

Slow (``pytest -m slow``), the real MNIST-5k: all 3,500 training images, 4 epochs, K=5, learning
rate ramped to 1e-3 over the first 10% of steps then flat, training radii (l_1 10, l_2 2.0,
l_inf 0.2) ramped up over the first half of the steps, PGD-10 on 200 validation images at those
radii, where standard training has collapsed. Measured on 2 CPU cores (torch 2.13.0,
2026-11-25), final epoch, about 3 minutes:
    standard  clean 92.0  l_inf  7.0  l_2 30.0  l_1 43.0  all 7.0
    mat       clean 93.5  l_inf 35.5  l_2 57.0  l_1 60.5  all 33.0
The thresholds below sit well under these margins (+28, +27, +17.5, +26).
"""

import copy

import pytest

from conftest import TINY
from mat_dist.core.run_config import config_from_dict, load_config
from mat_dist.training.in_process import train_in_process

DIGITS_EPS = {"l1": 3.0, "l2": 1.0, "linf": 0.1}

SHORT = ["tracking.enabled=false", "train.epochs=4", "attack.steps=5", "attack.warmup=0.5",
         "optim.schedule=[[0.0,0.2],[0.1,1.0],[1.0,1.0]]",
         "attack.eps=[10.0,2.0,0.2]", "attack.alpha=[4.0,1.0,0.1]",
         "eval.examples=200", "eval.steps=10", "eval.eps={linf: 0.2, l2: 2.0, l1: 10.0}"]


def _digits_config(method: str):
    raw = copy.deepcopy(TINY)
    raw["data"] = {"name": "digits", "val_size": 300, "batch_size": 32}
    raw["model"]["num_members"] = 3
    raw["method"]["name"] = method
    eps = [DIGITS_EPS[n] for n in ("l1", "l2", "linf")]
    raw["attack"] = {"steps": 3, "norms": ["l1", "l2", "linf"], "eps": eps, "alpha": [e / 2 for e in eps],
                     "warmup": 0.3}
    raw["optim"] = {"name": "adam", "lr": 0.003, "schedule": [[0.0, 1.0], [1.0, 1.0]]}
    raw["train"]["epochs"] = 6
    raw["eval"] = {"examples": 300, "steps": 10, "eps": dict(DIGITS_EPS)}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("learning-digits")
    return {method: train_in_process(_digits_config(method), out / method).metrics[-1]
            for method in ("standard", "mat")}


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("learning")
    return {method: train_in_process(load_config("mnist5k-mat", SHORT + [f"method.name={method}"]),
                                     out / method).metrics[-1]
            for method in ("standard", "mat")}


def _assert_mat_beats_standard(runs: dict, *, per_norm: float, union: float) -> None:
    std, mat = runs["standard"], runs["mat"]
    for norm in ("linf", "l2", "l1"):
        assert mat[f"val/robust_{norm}"] >= std[f"val/robust_{norm}"] + per_norm, norm
    assert mat["val/robust_all"] >= std["val/robust_all"] + union


def test_mat_beats_standard_training_on_every_norm_of_the_digits(digits_runs):
    _assert_mat_beats_standard(digits_runs, per_norm=0.10, union=0.10)
    assert digits_runs["mat"]["val/clean_acc"] >= 0.75


@pytest.mark.slow
def test_mat_beats_standard_training_on_every_norm(short_runs):
    _assert_mat_beats_standard(short_runs, per_norm=0.10, union=0.15)


@pytest.mark.slow
def test_mat_keeps_clean_accuracy_well_above_chance(short_runs):
    assert short_runs["mat"]["val/clean_acc"] >= 0.80
