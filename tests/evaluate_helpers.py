"""Shared, cached fixtures of the evaluator tests: a tiny trained MIMO model on sklearn digits, one Ray runtime.

Cached per test session (module-level caches), so every test file that uses
them pays the few seconds of training and the Ray start-up once.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from mat_dist.core.checkpoint import load_model, save_weights
from mat_dist.data import load_splits
from mat_dist.core.models import ModelSpec, build_model

RADII = {"linf": 0.1, "l2": 1.0, "l1": 5.0}  # 8x8 digits in [0, 1]


@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="matd-eval-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.lru_cache(maxsize=None)
def digits():
    return load_splits("digits", val_size=100)


@functools.lru_cache(maxsize=None)
def tiny_model_path(num_members: int = 2, epochs: int = 3, train_images: int = 800) -> Path:
    """A MIMO MSD-CNN on 8x8 digits, trained clean for a few seconds (about 93% test accuracy)."""
    splits = digits()
    torch.manual_seed(0)
    spec = ModelSpec(backbone="mnist_cnn", num_members=num_members, in_channels=1, image_size=(8, 8),
                     num_classes=10, mean=splits.mean, std=splits.std)
    net = build_model(spec)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    x, y = splits.train.images[:train_images], splits.train.labels[:train_images]
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            xb = x[idx].unsqueeze(1).expand(-1, num_members, -1, -1, -1)  # same image on every head
            loss = F.cross_entropy(net(xb).reshape(-1, 10), y[idx].repeat_interleave(num_members))
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = workdir() / f"tiny-m{num_members}.safetensors"
    save_weights(net.eval(), path)
    return path


def tiny_model(member: int | None = None):
    torch.set_num_threads(1)
    return load_model(tiny_model_path(), member=member)


@functools.lru_cache(maxsize=None)
def ray_session() -> None:
    """One local Ray runtime with 2 CPUs for every test that needs Ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        atexit.register(ray.shutdown)
