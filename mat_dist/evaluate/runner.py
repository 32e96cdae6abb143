"""The Ray side of the evaluator: one Ray task per shard, retried when its worker dies.

This is the only evaluator module that imports Ray (inside functions: nothing
runs at import time). Each task is thin: it calls ``shards.run_shard``, which
loads the model from its ``ModelSource``, attacks, gates and writes its own Parquet file
atomically. Resume needs no state here: shards whose file exists are never
submitted again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.model_source import ModelSource
from mat_dist.evaluate.shards import Shard, pending_shards, run_shard
from mat_dist.evaluate.suite import Resources

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]  # (shards done, shards in all, last shard name)


@dataclass(frozen=True)
class Chaos:
    """Fault injection for tests: the task of shard ``shard_name`` kills its own worker (SIGKILL)
    the first time it runs; ``marker`` records that it did, so the retry runs normally."""

    shard_name: str
    marker: str


class ShardsFailed(UserError):
    """Some shards failed for good; the finished ones are kept, and re-running resumes."""


def _shard_task(shard: Shard, model: ModelSource, images: torch.Tensor, labels: torch.Tensor, out_dir: str,
                base_seed: int, threads: int, use_gpu: bool, channels_last: bool | str, chaos: Chaos | None) -> str:
    if chaos is not None and shard.name == chaos.shard_name and not os.path.exists(chaos.marker):
        Path(chaos.marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return run_shard(shard, model=model, images=images, labels=labels, out_dir=out_dir,
                     base_seed=base_seed, threads=threads, device=device, channels_last=channels_last)


@contextlib.contextmanager
def ray_runtime(*, workers: int, cluster: str | os.PathLike | None) -> Iterator[None]:
    """Ray, initialised for the shards: the cluster of a cluster file, or a local runtime of ``workers`` CPUs.

    An already initialised runtime (tests, notebooks) is used as it is and left
    running; a runtime started here is shut down on exit. Cluster files are the
    training ones (``mat_dist.cluster.load_cluster``: a file or a shipped name
    such as ``local``); both kinds of runtime are started by ``mat_dist.cluster.connect``.
    """
    from mat_dist.cluster import ClusterConfig, LocalConfig, connect, load_cluster

    if cluster is not None:
        target = load_cluster(cluster)
    else:  # a new private runtime of ``workers`` CPUs, never another user's cluster found on this machine
        target = ClusterConfig(local=LocalConfig(num_cpus=workers), source=f"--workers {workers}")
    # check=False: the evaluator asks per-shard resources. Shards are plain tasks: no dashboard, no task output.
    with connect(target, check=False, tasks_only=cluster is None):
        yield


def run_shards(shards: list[Shard], *, model: ModelSource, images: torch.Tensor, labels: torch.Tensor,
               out_dir: Path, base_seed: int, resources: Resources, workers: int,
               cluster: str | os.PathLike | None = None, on_progress: ProgressFn | None = None,
               chaos: Chaos | None = None) -> int:
    """Run every shard without a file yet; return how many ran. ``workers=0`` runs them in this process."""
    todo = pending_shards(shards, out_dir)
    done = len(shards) - len(todo)
    if on_progress is not None:
        on_progress(done, len(shards), "")
    if not todo:
        return 0
    threads = max(1, int(resources.num_cpus))
    args = dict(model=model, out_dir=str(out_dir.resolve()), base_seed=base_seed)
    if workers == 0 and cluster is None:
        # The suite's resources.num_gpus > 0 asks for the GPU here as it does of a Ray task (_shard_task).
        device = "cuda" if resources.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        for shard in todo:
            run_shard(shard, images=images, labels=labels, threads=threads, device=device,
                      channels_last=resources.channels_last, **args)
            done += 1
            if on_progress is not None:
                on_progress(done, len(shards), shard.name)
        return len(todo)
    return _run_on_ray(todo, images=images, labels=labels, threads=threads, resources=resources, workers=workers,
                       cluster=cluster, on_progress=on_progress, done=done, total=len(shards), chaos=chaos, **args)


def _run_on_ray(todo: list[Shard], *, images, labels, threads, resources: Resources, workers, cluster,
                on_progress, done, total, chaos, model, out_dir, base_seed) -> int:
    import ray
    from ray.exceptions import RayError

    with ray_runtime(workers=workers, cluster=cluster):
        task = ray.remote(_shard_task).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=resources.max_retries,
            retry_exceptions=False, name="matd-eval-shard")
        images_ref, labels_ref = ray.put(images), ray.put(labels)
        model_ref = ray.put(model)  # once, not per task (an in-memory module may be large)
        refs = {task.remote(s, model_ref, images_ref, labels_ref, out_dir, base_seed, threads,
                            resources.num_gpus > 0, resources.channels_last, chaos): s for s in todo}
        failures: list[tuple[Shard, BaseException]] = []
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                shard = refs[ready[0]]
                try:
                    ray.get(ready[0])
                except RayError as err:
                    failures.append((shard, err))
                    log.error("shard %s failed:\n%s", shard.name, "".join(traceback.format_exception(err)))
                done += 1
                if on_progress is not None:
                    on_progress(done, total, shard.name)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        if failures:
            shard, err = failures[0]
            cause = getattr(err, "cause", None) or err
            first = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
            raise ShardsFailed(f"{len(failures)} of {len(todo)} shards failed (first: {shard.name}: "
                               f"{type(cause).__name__}: {first}); finished shards are kept, "
                               f"re-run the same command to retry the rest")
        return len(todo)
