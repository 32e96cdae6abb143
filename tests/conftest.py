"""Shared fixtures: tiny configs on scikit-learn's 8x8 digits, so runs take seconds."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "digits", "val_size": 100, "batch_size": 32, "limit_train": 320},
    "model": {"backbone": "mnist_cnn", "num_members": 2},
    "method": {"name": "mat"},
    "attack": {"steps": 2, "norms": ["l2", "linf"], "eps": [1.0, 0.1], "alpha": [0.5, 0.05]},
    "optim": {"name": "adam", "lr": 0.001, "schedule": [[0.0, 1.0], [1.0, 1.0]]},
    "train": {"epochs": 3, "threads": 1},
    "eval": {"examples": 40, "steps": 3, "eps": {"linf": 0.1, "l2": 1.0, "l1": 3.0}},
    "tracking": {"enabled": False},
}


@pytest.fixture
def tiny_raw():
    """A fresh copy of the tiny config as plain data (mutable per test)."""
    import copy

    return copy.deepcopy(TINY)
