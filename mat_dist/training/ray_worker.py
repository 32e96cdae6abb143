"""The per-worker function of the Ray Train job: build the core ``Trainer``, resume, train, report.

One rank of the DDP group runs ``train_worker``. It is thin on purpose: the
training loop is ``mat_dist.core.trainer.Trainer`` unchanged; this module only adds
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
- Each epoch: rank 0 records it with the ``EpochRecorder`` every path uses
  (metrics line, checkpoint, MLflow step); its checkpoint (mat-dist's layout,
  model.safetensors + state.pt, loadable with weights_only) gets every rank's
  attack RNG and the run's metrics history and goes to ``ray.train.report``;
  the other ranks report the same metrics without a checkpoint (report is a
  barrier).
- Each epoch once: the metrics history lives in the checkpoint, so after a
  restart rank 0 holds exactly the epochs up to the restored one (the resume
  rule of ``run_folder``); MLflow gets an epoch only when its step is not
  logged yet.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mat_dist.core.checkpoint import load_checkpoint
from mat_dist.cluster.files import ClusterConfig
from mat_dist.core.run_config import RunConfig, config_from_dict, config_to_dict
from mat_dist.plumbing.console import OWN_MARKER, plural
from mat_dist.data import load_splits
from mat_dist.core.trainer import Trainer, set_threads
from mat_dist.training.recorder import EpochRecorder
from mat_dist.core.run_folder import RunFolder, upto_checkpoint

RANK_RNG = "rank_rng.pt"  # list of every rank's attack-RNG state, index = rank


@dataclass(frozen=True, kw_only=True)
class WorkerArgs:
    """What every rank of a Ray Train job is given (``train_loop_config``, as plain data through Ray).

    Every path is absolute: workers run in a Ray session folder.
    """

    config: dict[str, Any]          # the resolved run config as plain data, data.root absolute
    output: str                     # the run folder; rank 0 keeps a live metrics.jsonl there on the driver's node
    threads: int                    # torch threads per rank (the cluster file's workers.cpus)
    use_gpu: bool
    driver_ip: str                  # the driver's node: its folders are reachable only there
    tracking_uri: str | None = None
    tracking_run_id: str | None = None  # the MLflow run the driver made; None: rank 0 logs nothing
    experiment: str = "mat-dist"
    run_name: str = ""

    @classmethod
    def of(cls, cfg: RunConfig, output: Path, cluster: ClusterConfig, *, tracking_uri: str | None = None,
           tracking_run_id: str | None = None) -> WorkerArgs:
        """The arguments of ``cfg``'s job on ``cluster``, built in a driver connected to Ray."""
        import ray.util

        raw = config_to_dict(cfg)
        for section, key in (("data", "root"), ("train", "init_from")):  # workers run in another folder
            if raw[section].get(key):
                raw[section][key] = str(Path(raw[section][key]).expanduser().resolve())
        return cls(config=raw, output=str(Path(output).resolve()), threads=cluster.threads_per_worker,
                   use_gpu=cluster.use_gpu, driver_ip=ray.util.get_node_ip_address(), tracking_uri=tracking_uri,
                   tracking_run_id=tracking_run_id, experiment=cfg.tracking.experiment, run_name=cfg.name)


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


def _restore(trainer: Trainer, checkpoint: Any, rank: int) -> list[dict[str, Any]]:
    """Load Ray's latest checkpoint into ``trainer``; return the metrics history up to its epoch."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        path = Path(folder)
        saved = load_checkpoint(path, expect=trainer.spec)
        trainer.load_state(saved.net, saved.state)
        rngs = torch.load(path / RANK_RNG, weights_only=True) if (path / RANK_RNG).is_file() else []
        history = RunFolder(path).read_metrics()
    if rank < len(rngs) and len(rngs) == trainer.world_size:
        trainer.attack_rng.set_state(rngs[rank])
    else:  # another world size (elastic resize): a fresh, distinct stream per rank and epoch
        trainer.attack_rng.manual_seed(trainer.cfg.seed * 7919 + rank + 104_729 * trainer.progress.epoch)
    return upto_checkpoint(history, trainer.progress.epoch)


def _rank0_tracker(args: WorkerArgs):
    """Rank 0's MLflow view of the run the driver created (nothing when the driver made none)."""
    from mat_dist.plumbing.tracking import NullTracker, Tracker

    if not args.tracking_run_id:
        return NullTracker()
    tracker = Tracker.start(uri=args.tracking_uri, experiment=args.experiment, run_name=args.run_name,
                            run_id=args.tracking_run_id)
    tracker.local_record = str(RunFolder(Path(args.output)).metrics)
    return tracker


class RankSink:
    """The ``Trainer.fit`` sink of one rank: rank 0 records the epoch (``EpochRecorder``) and publishes its
    checkpoint through ``ray.train.report``; the other ranks report the same metrics without one."""

    def __init__(self, args: WorkerArgs, trainer: Trainer, history: list[dict[str, Any]]) -> None:
        self.trainer, self.world = trainer, trainer.world_size
        self.recorder: EpochRecorder | None = None
        if trainer.rank == 0:
            live = _output_reachable(args)  # the driver's run folder is on this node: keep metrics.jsonl live
            self.recorder = EpochRecorder(history, metrics=RunFolder(Path(args.output)).metrics if live else None,
                                          publish=self._publish, tracker=_rank0_tracker(args),
                                          on_epoch=self._print_epoch)

    def __call__(self, metrics: dict[str, float], trainer: Trainer) -> None:
        if self.recorder is not None:
            self.recorder(metrics, trainer)
            return
        import ray.train

        _gather(trainer.attack_rng.get_state(), self.world)  # collective: rank 0 gathers in _publish
        ray.train.report(metrics, checkpoint=None)

    def _publish(self, row: dict[str, Any], folder: Path) -> None:
        import ray.train

        assert self.recorder is not None
        torch.save(_gather(self.trainer.attack_rng.get_state(), self.world), folder / RANK_RNG)
        RunFolder(folder).write_metrics(self.recorder.history)  # the history up to this epoch, for a restart
        # The epoch in the name for people; a random suffix because a restarted attempt may write
        # the same epoch again, and Ray wants checkpoint folder names unique.
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=f"epoch-{int(row['epoch']):04d}-{uuid.uuid4().hex[:8]}")

    def _print_epoch(self, row: dict[str, Any]) -> None:
        cfg = self.trainer.cfg
        robust = " ".join(f"{k.split('_')[-1]} {100 * v:.1f}" for k, v in row.items() if k.startswith("val/robust_"))
        _say(f"epoch {int(row['epoch'])}/{cfg.train.epochs}: loss {row['train/loss']:.3f}  clean "
             f"{100 * row.get('val/clean_acc', float('nan')):.1f}%  {cfg.eval.attack.value.upper()} robust {robust}  "
             f"({row['epoch_time_s']:.1f} s, {plural(self.world, 'worker')})")


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


def _output_reachable(args: WorkerArgs) -> bool:
    """True when this worker runs on the driver's machine, so the run folder is the driver's folder."""
    import ray.util

    return ray.util.get_node_ip_address() == args.driver_ip and Path(args.output).is_dir()


def train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's ``train_loop_per_worker``: one DDP rank of a training job (``config``: a ``WorkerArgs``
    as plain data, ``ray_job.torch_trainer``'s). Rank 0 returns a summary for the driver."""
    import ray.train

    args = WorkerArgs(**config)
    started = time.perf_counter()
    _quiet_ray_train_reports()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = config_from_dict(args.config)
    set_threads(args.threads)
    device = _device(args.use_gpu)
    splits = load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
                         limit_train=cfg.data.limit_train)
    trainer = Trainer(cfg, splits, device=device, rank=rank, world_size=world, wrap=_ddp_wrapper(device, world))
    history = _restore(trainer, ray.train.get_checkpoint(), rank)
    resumed_from = trainer.progress.epoch
    if rank == 0 and resumed_from:
        _say(f"resumed from the checkpoint of epoch {resumed_from} ({plural(world, 'worker')})")
    sink = RankSink(args, trainer, history)

    def on_batch(i: int, n: int) -> None:
        if i == n:
            _sync_buffers(trainer.net, world)

    trainer.fit(sink, on_batch)
    spread = parameter_spread(trainer.net, world)
    if rank != 0:
        return None
    return {"world_size": world, "resumed_from": resumed_from, "epochs": trainer.progress.epoch,
            "parameter_spread": spread, "worker_wall_s": time.perf_counter() - started}
