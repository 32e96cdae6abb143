"""Benchmarks of the parallel parts: evaluator throughput and workers, Ray Train against the in-process loop.

Like ``mat_dist.bench.method_costs``: medians of interleaved repeats (A, B, A, B, ...)
after a warm-up, ratios of two things measured in the same run, no assertion
on time anywhere.

- ``bench_evaluator``: examples per second of each attack of a suite (attack
  plus gate, on a trained model, the model loaded once: the attack's own
  throughput), then the evaluator's shards on a local Ray runtime of 2 CPUs run
  one at a time ("1 worker") and two at a time ("2 workers"), one torch thread
  per shard as ``matd evaluate --workers N`` gives them.
- ``bench_ray_train``: the same short training run in this process, as one
  Ray Train worker with every CPU, and as two workers with half each.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from mat_dist.bench.method_costs import machine_info, summary_stats
from mat_dist.plumbing.errors import UserError

# ---------------------------------------------------------------- evaluator


def _suite_and_data(model_path: str, suite_name: str, examples: int, dataset: str | None, data_root: str | None,
                    overrides: list[str]):
    from mat_dist.core.checkpoint import find_weights, load_model
    from mat_dist.evaluate.evaluator import load_test_images
    from mat_dist.evaluate.suite import load_suite

    weights = find_weights(Path(model_path)).resolve()
    model = load_model(weights)
    suite = load_suite(suite_name, overrides)
    dataset = dataset or _run_dataset(weights)
    images, labels = load_test_images(dataset, data_root, examples, model.spec)
    return weights, suite, images, labels


def _run_dataset(weights: Path) -> str:
    """The dataset of the run folder the weights come from (its config.yaml), else the embedded default."""
    from mat_dist.core.run_config import read_yaml
    from mat_dist.core.run_folder import RunFolder

    config = RunFolder(weights.parent).config
    if config.is_file():
        raw = read_yaml(config) or {}
        return str((raw.get("data") or {}).get("name") or "mnist5k")
    return "mnist5k"


def attack_throughput(weights: Path, suite, images: torch.Tensor, labels: torch.Tensor, *, repeats: int,
                      warmup: int, threads: int) -> dict[str, Any]:
    """Examples per second of every attack of ``suite`` (attack + gate) against the deployed ensemble."""
    from mat_dist.bench.method_costs import time_interleaved
    from mat_dist.evaluate.model_source import parse_source
    from mat_dist.evaluate.shards import attack_and_gate, models_for
    from mat_dist.evaluate.suite import ENSEMBLE

    torch.set_num_threads(threads)
    model = models_for(parse_source(weights), (ENSEMBLE,), torch.device("cpu"))[ENSEMBLE]
    fns: dict[str, Callable[[], None]] = {
        spec.name: (lambda spec=spec: attack_and_gate(spec, model, images, labels, seed=suite.seed))
        for spec in suite.attacks}
    times = time_interleaved(fns, repeats=repeats, warmup=warmup, device="cpu")
    n = len(images)
    return {name: {**summary_stats(t), "examples": n, "examples_per_s": n / statistics.median(t)}
            for name, t in times.items()}


def worker_speedup(weights: Path, suite, images: torch.Tensor, labels: torch.Tensor, *, repeats: int,
                   concurrency: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Wall time of the suite's shards on one local Ray runtime, run ``c`` at a time for each ``c``.

    One runtime for all rounds, so Ray's start-up (seconds) is left out and the
    ratio is that of the shards' work alone. A shard asks ``max(concurrency) / c``
    CPUs, so Ray runs ``c`` of them at once; each uses one torch thread.
    """
    import ray

    from mat_dist.cluster import ClusterConfig, LocalConfig, connect
    from mat_dist.evaluate.model_source import parse_source
    from mat_dist.evaluate.runner import _shard_task
    from mat_dist.evaluate.shards import plan_shards
    from mat_dist.evaluate.suite import plan_jobs

    cpus = max(concurrency)
    jobs = [j for j in plan_jobs(suite, num_members=1, examples=len(images)) if j.group == "suite"]
    shards = plan_shards(jobs, suite.shard_size)
    walls: dict[int, list[float]] = {c: [] for c in concurrency}
    with connect(ClusterConfig(local=LocalConfig(num_cpus=cpus), source="bench"), check=False, tasks_only=True):
        images_ref, labels_ref = ray.put(images), ray.put(labels)
        model = parse_source(weights)
        task = ray.remote(_shard_task)
        for _ in range(repeats):
            for c in concurrency:
                with tempfile.TemporaryDirectory(prefix="mat-dist-bench-eval-") as out:
                    start = time.perf_counter()
                    refs = [task.options(num_cpus=cpus / c).remote(
                        s, model, images_ref, labels_ref, out, suite.seed, 1, False, suite.resources.channels_last,
                        None) for s in shards]
                    ray.get(refs)
                    walls[c].append(time.perf_counter() - start)
    out: dict[str, Any] = {"shards": len(shards), "shard_size": suite.shard_size,
                           "workers": {str(c): summary_stats(w) for c, w in walls.items()}}
    base = statistics.median(walls[min(concurrency)])
    out["speedup"] = {str(c): base / statistics.median(w) for c, w in walls.items()}
    return out


def bench_evaluator(model_path: str | os.PathLike, *, suite_name: str = "quick", examples: int = 100,
                    repeats: int = 3, warmup: int = 1, dataset: str | None = None, data_root: str | None = None,
                    suite_overrides: list[str] | None = None, speedup: bool = True) -> dict[str, Any]:
    """Examples/s per attack of ``suite_name`` on the first ``examples`` test images, and 2 vs 1 workers."""
    weights, suite, images, labels = _suite_and_data(str(model_path), suite_name, examples, dataset, data_root,
                                                     list(suite_overrides or []))
    threads = len(os.sched_getaffinity(0))
    result: dict[str, Any] = {
        "settings": {"model": str(weights), "suite": suite.name, "examples": examples, "repeats": repeats,
                     "warmup": warmup, "threads": threads},
        "machine": machine_info("cpu"),
        "attacks": attack_throughput(weights, suite, images, labels, repeats=repeats, warmup=warmup,
                                     threads=threads),
    }
    if speedup:
        # The shards of each attack: shard_size chosen so that every attack has 2 shards at least.
        suite = replace(suite, shard_size=max(1, min(suite.shard_size, (examples + 1) // 2)))
        result["ray_workers"] = worker_speedup(weights, suite, images, labels, repeats=max(1, repeats - 1))
        result["ratios"] = {"eval_2_workers_over_1": result["ray_workers"]["speedup"].get("2")}
    return result


# ---------------------------------------------------------------- Ray Train

TRAIN_PATHS = ("in_process", "ray_1_worker", "ray_2_workers")


def _train_once(path: str, cfg, output: Path, cpus: int) -> dict[str, float]:
    from mat_dist.cluster.files import ClusterConfig, LocalConfig, WorkersConfig
    from mat_dist.training import train

    cluster = None  # in_process
    if path != "in_process":
        num = 1 if path == "ray_1_worker" else 2
        cluster = ClusterConfig(workers=WorkersConfig(num=num, cpus=float(max(1, cpus // num))),
                                local=LocalConfig(num_cpus=cpus), source="bench")
    start = time.perf_counter()
    rows = train(cfg, output, cluster).metrics
    wall = time.perf_counter() - start
    epochs = [float(r["epoch_time_s"]) for r in rows]
    return {"wall_s": wall, "epoch_s": statistics.median(epochs), "final_loss": float(rows[-1]["train/loss"])}


def bench_ray_train(cfg, *, repeats: int = 2, paths: tuple[str, ...] = TRAIN_PATHS) -> dict[str, Any]:
    """The same training run (``cfg``, tracking off) through each path, interleaved ``repeats`` times.

    ``epoch_s`` is the median of the run's own per-epoch times (training plus the
    per-epoch validation check); ``wall_s`` adds start-up (Ray runtime, worker
    group, DDP rendezvous) and writing the run folder.
    """
    from mat_dist.core.run_config import RunConfig

    if not isinstance(cfg, RunConfig):
        raise UserError("bench_ray_train takes a RunConfig")
    cfg = replace(cfg, tracking=replace(cfg.tracking, enabled=False), train=replace(cfg.train, threads=None))
    cpus = len(os.sched_getaffinity(0))
    if "ray_2_workers" in paths and cfg.data.batch_size % 2:
        raise UserError(f"data.batch_size {cfg.data.batch_size} must be even for the 2-worker run")
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    for _ in range(repeats):
        for path in paths:
            with tempfile.TemporaryDirectory(prefix="mat-dist-bench-train-") as tmp:
                runs[path].append(_train_once(path, cfg, Path(tmp) / "run", cpus))
    result: dict[str, Any] = {
        "settings": {"config": cfg.name, "method": cfg.method.name, "epochs": cfg.train.epochs,
                     "limit_train": cfg.data.limit_train, "batch_size": cfg.data.batch_size,
                     "steps": cfg.attack.steps, "eval_examples": cfg.eval.examples, "repeats": repeats, "cpus": cpus},
        "machine": machine_info("cpu"),
        "paths": {p: {"epoch_s": summary_stats([r["epoch_s"] for r in rs]), "wall_s": summary_stats([r["wall_s"] for r in rs]),
                      "final_loss": [r["final_loss"] for r in rs]} for p, rs in runs.items()},
    }
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("epoch_s", "wall_s")} for p, rs in runs.items()}
    ratios: dict[str, float] = {}
    if "in_process" in med and "ray_1_worker" in med:
        ratios["ray_1_worker_over_in_process_epoch"] = med["ray_1_worker"]["epoch_s"] / med["in_process"]["epoch_s"]
        ratios["ray_1_worker_over_in_process_wall"] = med["ray_1_worker"]["wall_s"] / med["in_process"]["wall_s"]
    if "ray_1_worker" in med and "ray_2_workers" in med:
        ratios["ray_2_workers_speedup_epoch"] = med["ray_1_worker"]["epoch_s"] / med["ray_2_workers"]["epoch_s"]
        ratios["ray_2_workers_speedup_wall"] = med["ray_1_worker"]["wall_s"] / med["ray_2_workers"]["wall_s"]
    result["ratios"] = ratios
    return result
