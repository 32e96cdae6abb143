"""The per-worker training loop. It knows nothing of Ray or MLflow.

``Trainer`` owns one worker's model, optimiser and attack RNG. ``fit`` runs
epochs and hands each epoch's metrics and a checkpointable state to a sink
supplied by the caller: the local runner writes files and MLflow, the Ray
Train worker reports to Ray. Under torch.distributed (DDP), each rank trains
on its own rows of every global batch and the metrics are summed across ranks
before the sink sees them.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from torch import nn

from mat_dist.core.attacks import TiedRows, cross_gradient_diagnostics
from mat_dist.core.run_config import OptimizerName, RunConfig, scheduled_values
from mat_dist.data import DataSplits
from mat_dist.core.mimo_batches import MimoBatches
from mat_dist.plumbing.errors import UserError
from mat_dist.core.fast_path import prepare_model, resolve_fast_path
from mat_dist.core.init_from import initial_state
from mat_dist.core.methods import METHODS, Method, adversarial_loss, per_member_ce
from mat_dist.core.models.mimo import ModelSpec, build_model
from mat_dist.core.norm_sampling import NormRule, NormSampler
from mat_dist.core.threats import ThreatModel, make_threat
from mat_dist.core.epoch_check import Selection, robust_counts


class TrainingDiverged(UserError):
    """The loss stopped being finite: the epoch is not checkpointed."""


def model_spec(cfg: RunConfig, splits: DataSplits) -> ModelSpec:
    c, h, w = splits.train.images.shape[1:]
    # model.normalize=false: [0, 1] pixels go in as they are (mean 0, std 1), as RobustBench's models take them
    mean, std = (splits.mean, splits.std) if cfg.model.normalize else ((0.0,) * c, (1.0,) * c)
    return ModelSpec(backbone=cfg.model.backbone, num_members=cfg.model.num_members, in_channels=c,
                     image_size=(h, w), num_classes=splits.num_classes, mean=mean, std=std,
                     kind=METHODS[cfg.method.name].model_kind, ensemble_output=cfg.model.ensemble_output)


def training_threats(cfg: RunConfig, radius_scale: float = 1.0, *, epoch: int = 0) -> list[ThreatModel]:
    """The attack config's threat models during 0-based ``epoch`` (its radii and step sizes after the
    config's schedule), radii scaled by the warm-up factor in (0, 1]."""
    a = cfg.attack
    values = scheduled_values(cfg, epoch)
    threats = []
    for norm, eps, alpha in zip(a.norms, values.eps, values.alpha):
        threat = make_threat(norm, eps=eps * radius_scale, alpha=alpha).with_topk(*a.l1_topk)
        threats.append(threat)
    return threats


def norm_rule(method: Method, cfg: RunConfig) -> NormRule | None:
    """How each batch's slots get their threat models: the method's draw (SAT, E-AT), else the attack's
    options (``attack.eat_sampling``, ``attack.rotate_norms``), else slot m in norm m. None for methods that
    use every threat model in every batch (MSD, AVG, MAX) or none (standard)."""
    if method.draw is not None:
        return method.draw
    if not method.per_slot:
        return None
    if cfg.attack.eat_sampling:
        return NormRule.E_AT
    return NormRule.ROTATE if cfg.attack.rotate_norms else NormRule.FIXED


def norm_counts(assigned: list[int], row_correct: torch.Tensor, tied: TiedRows | None,
                num_norms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, attacked) examples per threat model in one batch, for E-AT's running accuracies: slot m's rows
    count under ``assigned[m]``; tied rows (attack.tie_repeated) were attacked in every slot under the tied
    slot's threat model, so all their slots count under that one."""
    row_correct = row_correct.detach().float().cpu()  # (B, M)
    untied = torch.ones(row_correct.shape[0], dtype=torch.bool) if tied is None else ~tied.rows.cpu()
    correct, seen = torch.zeros(num_norms), torch.zeros(num_norms)
    for m, index in enumerate(assigned):
        correct[index] += row_correct[untied, m].sum()
        seen[index] += untied.sum()
    if tied is not None:
        index = assigned[tied.threat_slot]
        correct[index] += row_correct[~untied].sum()
        seen[index] += (~untied).sum() * row_correct.shape[1]
    return correct, seen


def piecewise_linear(points: list[list[float]], progress: float) -> float:
    """Value at ``progress`` in [0, 1] of the line through [share, value] points; two points at one share
    make a step (the value after it holds from that share on)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= progress < x1:
            return y0 + (y1 - y0) * (progress - x0) / (x1 - x0)
    return points[-1][1] if progress >= points[-1][0] else points[0][1]


def radius_scale(warmup: float, progress: float) -> float:
    """Radius factor of the warm-up: linear from ~0 to 1 over the first ``warmup`` share of steps."""
    if warmup <= 0:
        return 1.0
    return min(1.0, max(progress, 1e-3) / warmup)  # never 0: a zero radius is no threat model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is visible; use train.device=cpu")
    return device


def set_threads(threads: int | None) -> int:
    """Match torch's intra-op threads to the CPUs this process may run on."""
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def _sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class EpochSink(Protocol):
    def __call__(self, metrics: dict[str, float], trainer: "Trainer") -> None: ...


BatchCallback = Callable[[int, int], None]  # (batch index, batches per epoch)


@dataclass(frozen=True)
class BestModel:
    epoch: int                          # 1-based epoch whose weights these are
    score: float                        # its val/robust_all
    weights: dict[str, torch.Tensor]    # its state dict, on the CPU


@dataclass
class Progress:
    epoch: int = 0  # epochs finished
    step: int = 0   # optimiser steps taken


class Trainer:
    def __init__(self, cfg: RunConfig, splits: DataSplits, *, device: torch.device | None = None,
                 rank: int = 0, world_size: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self.cfg = cfg
        self.splits = splits
        self.device = device or resolve_device(cfg.train.device)
        self.rank, self.world_size = rank, world_size
        self.method = METHODS[cfg.method.name]
        self.spec = model_spec(cfg, splits)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.net = build_model(self.spec)  # the plain module: saved, loaded and evaluated
        if cfg.train.init_from:  # fine-tuning: start from a trained network (a checkpoint, when resuming, wins)
            self.net.load_state_dict(initial_state(cfg.train.init_from, self.spec))
        self.net = self.net.to(self.device)
        # What the attack and the outer step call: ``net`` behind the train.* fast-path switches, same parameters.
        # ``auto`` is resolved here, on the device that trains (a Ray worker's, not the driver's).
        self.fast_path = resolve_fast_path(cfg.train, self.device)
        self.fast_net = prepare_model(self.net, self.fast_path, self.device)
        self.train_net = wrap(self.fast_net) if wrap else self.fast_net  # the DDP wrapper, when distributed
        self.optimizer = self._make_optimizer()
        self.batches = MimoBatches(splits.train, num_members=self.spec.num_members,
                                   batch_size=cfg.data.batch_size, seed=cfg.seed,
                                   input_repetition=cfg.data.input_repetition,
                                   batch_repetition=cfg.data.batch_repetition,
                                   rank=rank, world_size=world_size)
        self.total_steps = cfg.train.epochs * len(self.batches)
        self.attack_rng = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + rank)
        self.loss_weights = torch.tensor(scheduled_values(cfg, 0).loss_weights, device=self.device)
        self.progress = Progress()
        # Plain data carried in every checkpoint and given back by load_state (a tuning trial's lineage).
        self.lineage: dict[str, Any] = {}
        self.best: BestModel | None = None
        # Forward + backward passes of one global batch (paper Table 6): the unit of training cost.
        self.passes_per_batch = sum(self.method.passes_per_batch(
            steps=cfg.attack.steps, members=self.spec.num_members, norms=len(cfg.attack.norms)))
        rule = norm_rule(self.method, cfg)
        # Same seed on every rank and accuracies summed over ranks: every rank draws the same norms.
        self.norm_sampler = None if rule is None else NormSampler(
            rule, num_norms=len(cfg.attack.norms), num_slots=self.spec.num_members, seed=cfg.seed)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = self.net.parameters()
        if o.name is OptimizerName.SGD:
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                   nesterov=o.nesterov)
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)

    # ------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that resuming needs (tensors and plain values only)."""
        state = {
            "epoch": self.progress.epoch,
            "step": self.progress.step,
            "optimizer": self.optimizer.state_dict(),
            "attack_rng": self.attack_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "lineage": json.dumps(self.lineage),
        }
        if self.norm_sampler is not None:
            state["norm_sampler"] = self.norm_sampler.state_dict()
        if self.best is not None:
            state["best"] = {"epoch": self.best.epoch, "score": self.best.score, "weights": self.best.weights}
        return state

    def load_state(self, net: nn.Module, state: dict[str, Any]) -> None:
        self.net.load_state_dict(net.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.attack_rng.set_state(state["attack_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.progress = Progress(epoch=int(state["epoch"]), step=int(state["step"]))
        self.lineage = json.loads(state.get("lineage", "{}"))
        if self.norm_sampler is not None and "norm_sampler" in state:
            self.norm_sampler.load_state_dict(state["norm_sampler"])
        elif self.norm_sampler is not None and self.norm_sampler.adaptive:
            warnings.warn("the checkpoint holds no E-AT statistics (written before they were kept): the norm draws "
                          "start again from equal probabilities", stacklevel=2)
        best = state.get("best")
        self.best = None if best is None else BestModel(epoch=int(best["epoch"]), score=float(best["score"]),
                                                        weights=dict(best["weights"]))

    # ------------------------------------------------------------- loop

    def fit(self, sink: EpochSink, on_batch: BatchCallback | None = None) -> None:
        """Train the remaining epochs; ``sink`` receives each finished epoch."""
        while self.progress.epoch < self.cfg.train.epochs:
            start = time.perf_counter()
            metrics = self.train_epoch(self.progress.epoch, on_batch)
            metrics.update(self.evaluate())
            self.progress.epoch += 1
            metrics["epoch"] = self.progress.epoch
            self._track_best(metrics)
            metrics["epoch_time_s"] = time.perf_counter() - start
            metrics["train/passes"] = float(self.progress.step * self.passes_per_batch)  # since epoch 0
            metrics.update(self.fast_path.record())  # what this epoch ran with (train.* auto resolved)
            sink(metrics, self)

    def _current_threats(self, assigned: list[int] | None = None) -> list[ThreatModel]:
        """This step's threat models: one per slot (``assigned`` indices, by default this step's assignment
        when it is not drawn at random), or all of attack.norms for methods that use every one."""
        threats = training_threats(self.cfg, radius_scale(self.cfg.attack.warmup,
                                                          self.progress.step / self.total_steps),
                                   epoch=self.progress.epoch)
        if self.norm_sampler is None:
            return threats
        if assigned is None:
            assigned = self.norm_sampler.assign(self.progress.step)
        return [threats[i] for i in assigned]

    def _tied_rows(self, x: torch.Tensor) -> TiedRows | None:
        """The input-repeated rows of batch x (every slot the same image), when attack.tie_repeated is on."""
        if not self.cfg.attack.tie_repeated:
            return None
        same = (x == x[:, :1]).flatten(2).all(dim=2).all(dim=1)  # (B,)
        return TiedRows(rows=same, threat_slot=self.progress.step % self.spec.num_members)

    def train_epoch(self, epoch: int, on_batch: BatchCallback | None = None) -> dict[str, float]:
        cfg, m = self.cfg, self.spec.num_members
        self.train_net.train()
        loss_sum = torch.zeros(m, device=self.device)   # sum over batches of batch-mean CE
        correct = torch.zeros(m, device=self.device)    # examples, per sub-model
        seen = torch.zeros((), device=self.device)      # rows
        outer_sum = torch.zeros((), device=self.device)
        n_batches = len(self.batches)
        diagnostics: dict[str, float] = {}
        values = scheduled_values(cfg, epoch)
        self.loss_weights = torch.tensor(values.loss_weights, device=self.device)
        drawn = torch.zeros(len(cfg.attack.norms))  # slot-batches attacked in each norm this epoch
        for i, (x, y) in enumerate(self.batches.epoch(epoch)):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.optim.lr * piecewise_linear(cfg.optim.schedule, self.progress.step / self.total_steps)
            assigned = self.norm_sampler.assign(self.progress.step) if self.norm_sampler is not None else None
            threats = self._current_threats(assigned)
            tied = self._tied_rows(x)
            result = adversarial_loss(
                self.method, self.train_net, x, y, threats=threats, steps=cfg.attack.steps,
                random_start=cfg.attack.random_start, outer=cfg.method.outer_loss, weights=self.loss_weights,
                generator=self.attack_rng, attack_net=self.fast_net, tied=tied)
            if i == 0 and cfg.train.diagnostics and self.method.per_slot:
                diagnostics = self._diagnostics(result.x_adv, y, threats)
            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            self.optimizer.step()
            if assigned is not None:
                drawn.index_add_(0, torch.tensor(assigned), torch.ones(len(assigned)))  # a norm may repeat
                if self.norm_sampler.adaptive:  # E-AT: robust accuracy of the attacked batch, over all ranks
                    hits, attacked = norm_counts(assigned, result.row_correct, tied, len(cfg.attack.norms))
                    counted = _sum_across_ranks(torch.cat([hits, attacked]).to(self.device)).cpu()
                    self.norm_sampler.add(counted[:len(hits)], counted[len(hits):])
            self.progress.step += 1
            loss_sum += result.member_losses
            outer_sum += result.loss.detach()
            correct += result.member_correct
            seen += x.shape[0]
            if on_batch is not None:
                on_batch(i + 1, n_batches)
        totals = _sum_across_ranks(torch.cat([loss_sum, correct, seen.view(1), outer_sum.view(1)]))
        batches = n_batches * self.world_size
        member_loss, member_correct = totals[:m] / batches, totals[m:2 * m] / totals[2 * m]
        outer = float(totals[2 * m + 1] / batches)
        if not math.isfinite(outer):
            raise TrainingDiverged(f"the training loss became {outer} in epoch {epoch + 1}; the epoch was not "
                                   f"checkpointed: lower optim.lr or the attack step sizes and --resume")
        metrics = {"train/loss": outer, "lr": self.optimizer.param_groups[0]["lr"],
                   "radius_scale": radius_scale(cfg.attack.warmup, self.progress.step / self.total_steps)}
        for j in range(m):
            metrics[f"train/loss_m{j}"] = float(member_loss[j])
            metrics[f"train/acc_m{j}"] = float(member_correct[j])
        if cfg.schedule:  # the values this epoch trained with, so a schedule can be checked against its run
            for name in ("eps", "alpha", "loss_weights"):
                metrics.update({f"schedule/{name}.{i}": float(v) for i, v in enumerate(getattr(values, name))})
        metrics.update(diagnostics)
        if self.norm_sampler is not None and self.norm_sampler.rule in (NormRule.UNIFORM, NormRule.E_AT):
            accuracies = self.norm_sampler.accuracies()
            for j, norm in enumerate(cfg.attack.norms):  # how often each norm was drawn, and E-AT's figures
                metrics[f"norms/share_{norm.value}"] = float(drawn[j] / drawn.sum())
                if self.norm_sampler.adaptive and self.norm_sampler.seen[j] > 0:
                    metrics[f"norms/train_robust_{norm.value}"] = float(accuracies[j])
        return metrics

    def _diagnostics(self, x_adv: torch.Tensor, y: torch.Tensor, threats: list[ThreatModel]) -> dict[str, float]:
        """Cross-gradient ratio and step disagreement per sub-model at this batch's attacked inputs."""
        found = cross_gradient_diagnostics(lambda xa: per_member_ce(self.net(xa), y), x_adv, threats)
        return {f"diag/{name}_m{j}": float(v) for name, values in found.items() for j, v in enumerate(values)}

    def evaluate(self) -> dict[str, float]:
        """Clean and robust accuracy of the deployed ensemble on this rank's share of the validation slice,
        summed across ranks (``mat_dist.core.epoch_check``)."""
        cfg = self.cfg.eval
        val = self.splits.val
        n = min(cfg.examples, len(val))
        if n == 0:
            return {}
        x = val.images[:n][self.rank::self.world_size].to(self.device)
        y = val.labels[:n][self.rank::self.world_size].to(self.device)
        counts = robust_counts(self.net, x, y, dict(cfg.eps), attack=cfg.attack, steps=cfg.steps,
                               targets=cfg.targets, generator=self.attack_rng,
                               seed=self.cfg.seed + 1000 * self.progress.epoch + self.rank)
        keys = list(counts)
        totals = _sum_across_ranks(torch.stack([counts[k].float() for k in keys]))
        return {k: float(v) / n for k, v in zip(keys, totals)}

    # ------------------------------------------------------------- best model

    def _track_best(self, metrics: dict[str, float]) -> None:
        """Keep a copy of the weights of the epoch with the highest validation union (``eval.select=best``).

        Only epochs that end at the full training radii are candidates: during the radius warm-up
        (``attack.warmup``) the model is not yet trained at its threat model, and at the paper's radii its
        validation union sits at a floor of a few images, so a lucky early epoch would win on noise (one
        8-epoch MNIST-5k run picked epoch 1, at 72% clean accuracy, for 5 of 200 images against 1-2 later).
        Ties go to the later epoch: with equal union, the longer-trained model.
        """
        score = metrics.get("val/robust_all")
        if self.cfg.eval.select is not Selection.BEST or score is None:
            return
        if metrics.get("radius_scale", 1.0) < 1.0:  # still in the warm-up: not a candidate
            return
        if self.best is None or score >= self.best.score:
            weights = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
            self.best = BestModel(epoch=self.progress.epoch, score=float(score), weights=weights)
        metrics["best_epoch"] = self.best.epoch
        metrics["best/robust_all"] = self.best.score

    def final_net(self) -> nn.Module:
        """The network to ship as model.safetensors: the best epoch's (eval.select=best) or the last one's."""
        if self.best is None:
            return self.net
        net = build_model(self.spec)
        net.load_state_dict(self.best.weights)
        return net
