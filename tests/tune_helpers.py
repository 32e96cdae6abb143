"""Shared pieces of the tune tests: one local Ray runtime per session, the tiny base config of a sweep.

The runtime is started once (lru_cache) and reused by every tune test file;
if another test file already started one, that one is used as it is.
"""

from __future__ import annotations

import atexit
import copy
import functools
import os
import time

from conftest import TINY

# Evaluation radii so small that robust accuracy tracks clean accuracy: good and bad learning rates then
# separate after one epoch, which makes ASHA's decisions in the tiny sweep predictable.
SMALL_EVAL_EPS = {"linf": 0.02, "l2": 0.1, "l1": 0.3}


@functools.lru_cache(maxsize=None)
def ray_session() -> None:
    """A private local Ray runtime with 2 CPUs, started as ``matd`` starts one.

    Ray Train's placement-group cleaner frees the workers of a trial that Tune
    stops; it needs the dashboard and, when other Ray instances run on this
    machine, to be told which dashboard is ours (``ray_init_args`` does both).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import logging

    import ray

    from mat_dist.cluster.files import ClusterConfig, LocalConfig
    from mat_dist.cluster.runtime import ray_init_args

    if not ray.is_initialized():
        ray.init(**ray_init_args(ClusterConfig(local=LocalConfig(num_cpus=2))), logging_level=logging.WARNING,
                 log_to_driver=False)
        atexit.register(ray.shutdown)


def tiny_base(tmp_path, *, tracking: bool = False) -> dict:
    """conftest's tiny config as a sweep's base: K=1, small eval radii, MLflow in ``tmp_path`` if tracking."""
    raw = copy.deepcopy(TINY)
    raw["attack"]["steps"] = 1
    raw["eval"]["eps"] = dict(SMALL_EVAL_EPS)
    raw["tracking"] = {"enabled": tracking, "uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tune-tests"}
    return raw


def wait_for_full_cpus(timeout_s: float = 120.0) -> tuple[float, float]:
    """(available, total) CPUs once every CPU is free again, or at the timeout."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + timeout_s
    while True:
        available = ray.available_resources().get("CPU", 0.0)
        if available >= total or time.monotonic() > deadline:
            return available, total
        time.sleep(0.5)
