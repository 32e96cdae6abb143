"""The per-worker function of the Ray Train job: build the core ``Trainer``, resume, train, report.

One rank of the DDP group runs ``train_worker``. It is thin on purpose: the
training loop is ``mat_dist.train.Trainer`` unchanged; this module only adds
what being one rank of a Ray job needs:

- DDP: the Trainer's network wrapped in ``DistributedDataParallel`` (the
  process group is Ray's: gloo on CPU workers, nccl on GPU workers).
- BatchNorm: plain per-rank BatchNorm, not SyncBatchNorm. The attack's K
  forward passes run on the module without DDP (``Trainer.fast_net``); with SyncBatchNorm
  each of them would be a collective per BN layer (K+1 all-reduce rounds per
  batch per layer, and a hang if ranks ever ran different step counts). Each
  rank's share of a global batch (global // world rows, each carrying M
  examples) normalises on its own, as DDP does by default; DDP broadcasts rank
  0's running statistics at each outer forward, and ``_sync_buffers`` does so
  again after an epoch's last step, so evaluation and checkpoints see one set.
- Checkpoints: rank 0 writes mat-dist's checkpoint layout (model.safetensors +
  state.pt, loadable with weights_only) plus every rank's attack RNG and the
  run's metrics history, and hands it to ``ray.train.report``; the other ranks
  report the same metrics without a checkpoint (report is a barrier).
- Each epoch once: the metrics history lives in the checkpoint, so after a
  restart rank 0 holds exactly the epochs up to the restored one; MLflow gets
  an epoch only when its step is not logged yet.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mat_dist.checkpoint import load_checkpoint, save_checkpoint
from mat_dist.config import config_from_dict
from mat_dist.console import OWN_MARKER, plural
from mat_dist.data import load_splits
from mat_dist.runner import METRICS_FILE, read_metrics, write_atomic
from mat_dist.train import Trainer, set_threads

RANK_RNG = "rank_rng.pt"  # list of every rank's attack-RNG state, index = rank


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def _device(use_gpu: bool) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.cuda.set_device(device)
    return device


def _ddp_wrapper(device: torch.device, world_size: int):
    if world_size == 1:
        return None

    def wrap(net: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    return wrap


def _sync_buffers(net: nn.Module, world_size: int) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics)."""
    if _distributed(world_size):
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)


def _gather(obj: Any, world_size: int) -> list[Any]:
    if not _distributed(world_size):
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def parameter_spread(net: nn.Module, world_size: int) -> float:
    """Largest difference across ranks of any parameter tensor's sum (0.0: the ranks hold one model).

    Per-tensor sums in float64 are a cheap fingerprint: identical parameters
    give identical sums, and drifting ranks differ in almost every tensor.
    """
    sums = [float(p.detach().double().sum()) for p in net.parameters()]
    gathered = _gather(sums, world_size)
    return max((abs(a - b) for other in gathered for a, b in zip(other, gathered[0])), default=0.0)


def _metrics_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def _restore(trainer: Trainer, checkpoint: Any, rank: int) -> list[dict[str, Any]]:
    """Load Ray's latest checkpoint into ``trainer``; return the metrics history up to its epoch."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        path = Path(folder)
        saved = load_checkpoint(path, expect=trainer.spec)
        trainer.load_state(saved.net, saved.state)
        rngs = torch.load(path / RANK_RNG, weights_only=True) if (path / RANK_RNG).is_file() else []
        history = read_metrics(path / METRICS_FILE)
    if rank < len(rngs) and len(rngs) == trainer.world_size:
        trainer.attack_rng.set_state(rngs[rank])
    else:  # another world size (elastic resize): a fresh, distinct stream per rank and epoch
        trainer.attack_rng.manual_seed(trainer.cfg.seed * 7919 + rank + 104_729 * trainer.progress.epoch)
    return [r for r in history if int(r["epoch"]) <= trainer.progress.epoch]


class _Tracking:
    """Rank 0's MLflow view of the run the driver created: logs each epoch's step once."""

    def __init__(self, args: dict[str, Any]) -> None:
        from mat_dist.tracking import NullTracker, Tracker

        if args.get("tracking_run_id"):
            self.tracker = Tracker.start(uri=args["tracking_uri"], experiment=args["experiment"],
                                         run_name=args["run_name"], run_id=args["tracking_run_id"])
        else:
            self.tracker = NullTracker()
        self.tracker.local_record = str(Path(args["output"]) / METRICS_FILE)
        self.logged = self.tracker.logged_steps("epoch")

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        if step not in self.logged:
            self.tracker.log_metrics(row, step=step)
            self.logged.add(step)


class EpochReporter:
    """The ``Trainer.fit`` sink of one rank: checkpoint + ``ray.train.report``; rank 0 also logs."""

    def __init__(self, args: dict[str, Any], trainer: Trainer, history: list[dict[str, Any]]) -> None:
        self.args, self.rank, self.world = args, trainer.rank, trainer.world_size
        self.history = history
        self.output = Path(args["output"])
        self.live_metrics = self.rank == 0 and _output_reachable(args)
        self.tracking = _Tracking(args) if self.rank == 0 else None
        if self.tracking is not None:
            for row in history:  # epochs checkpointed before a crash that MLflow may lack
                self.tracking.log(row)

    def __call__(self, metrics: dict[str, float], trainer: Trainer) -> None:
        import ray.train

        rngs = _gather(trainer.attack_rng.get_state(), self.world)  # collective: every rank
        epoch = int(metrics["epoch"])
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        self.history.append(dict(metrics))
        with tempfile.TemporaryDirectory(prefix="mat-dist-ckpt-") as tmp:
            folder = save_checkpoint(Path(tmp), net=trainer.net, state=trainer.state_dict(), keep=1)
            torch.save(rngs, folder / RANK_RNG)
            (folder / METRICS_FILE).write_text(_metrics_text(self.history))
            # The epoch in the name for people; a random suffix because a restarted attempt may write
            # the same epoch again, and Ray wants checkpoint folder names unique.
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                             checkpoint_dir_name=f"epoch-{epoch:04d}-{uuid.uuid4().hex[:8]}")
        if self.live_metrics:
            write_atomic(self.output / METRICS_FILE, _metrics_text(self.history))
        assert self.tracking is not None
        self.tracking.log(metrics)
        robust = " ".join(f"{k.split('_')[-1]} {100 * v:.1f}" for k, v in metrics.items()
                          if k.startswith("val/robust_"))
        _say(f"epoch {epoch}/{trainer.cfg.train.epochs}: loss {metrics['train/loss']:.3f}  clean "
             f"{100 * metrics.get('val/clean_acc', float('nan')):.1f}%  {trainer.cfg.eval.attack.value.upper()} robust {robust}  "
             f"({metrics['epoch_time_s']:.1f} s, {plural(self.world, 'worker')})")


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report's whole metrics dict at INFO from a logger named by its file path,
    which ``LoggingConfig`` does not reach; rank 0 prints one line per epoch instead."""
    try:
        from ray.train.v2._internal.execution import context as ray_train_context
    except ImportError:  # another Ray layout: keep its logs
        return
    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)


def _say(line: str) -> None:
    """One progress line on the worker's stdout, which Ray streams to the driver's console.

    Not ``print``: Ray Train patches it into a logger that can also tee to stdout (lines twice).
    """
    sys.__stdout__.write(f"{OWN_MARKER}{line}\n")
    sys.__stdout__.flush()


def _output_reachable(args: dict[str, Any]) -> bool:
    """True when this worker runs on the driver's machine, so the run folder is the driver's folder."""
    import ray.util

    return ray.util.get_node_ip_address() == args["driver_ip"] and Path(args["output"]).is_dir()


def train_worker(args: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's ``train_loop_per_worker``: one DDP rank of ``matd train --cluster``.

    ``args`` (built by ``mat_dist.distributed.job``; every path absolute, as
    workers run in a Ray session folder): config (the resolved run config as
    plain data), output, threads, use_gpu, tracking_uri, tracking_run_id,
    experiment, run_name, driver_ip. Rank 0 returns a summary for the driver.
    """
    import ray.train

    started = time.perf_counter()
    _quiet_ray_train_reports()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = config_from_dict(args["config"])
    set_threads(args["threads"])
    device = _device(args["use_gpu"])
    splits = load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
                         limit_train=cfg.data.limit_train)
    trainer = Trainer(cfg, splits, device=device, rank=rank, world_size=world, wrap=_ddp_wrapper(device, world))
    history = _restore(trainer, ray.train.get_checkpoint(), rank)
    resumed_from = trainer.progress.epoch
    if rank == 0 and resumed_from:
        _say(f"resumed from the checkpoint of epoch {resumed_from} ({plural(world, 'worker')})")
    reporter = EpochReporter(args, trainer, history)

    def on_batch(i: int, n: int) -> None:
        if i == n:
            _sync_buffers(trainer.net, world)

    trainer.fit(reporter, on_batch)
    spread = parameter_spread(trainer.net, world)
    if rank != 0:
        return None
    return {"world_size": world, "resumed_from": resumed_from, "epochs": trainer.progress.epoch,
            "parameter_spread": spread, "worker_wall_s": time.perf_counter() - started}
