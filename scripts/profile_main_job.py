"""Where an epoch of the main job's training goes: shares of the attack's K steps (network forward, backward,
threat-model work), the outer step, the data, the per-epoch check and the run folder's writes.

    python scripts/profile_main_job.py [--train-images 320] [--epochs 2] [--output prof/train-profile.json]
        [KEY=VALUE ...]                  # overrides of the main job's config (train.precision=fp32, ...)

It trains the main job's config (mnist5k-paper-mat) in this process on the first ``--train-images`` training
images, with timers wrapped around the functions the trainer calls (nothing in mat_dist is changed). A short
run makes the per-epoch check (a fixed 200 validation images) look larger than it is, so the script also
projects the check's share onto a full epoch of the main job (3,500 training images): the check's seconds
against the measured seconds per training batch times the full epoch's batches. Shares only: on a loaded
machine the absolute seconds mean little, the shares within one process less so.

The per-epoch check is timed twice more, after training, on the fp32 twin's trained weights (``--trained``, a
run folder): early in a run the model is broken on most images and APGD has little left to attack.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from mat_dist.core import attacks, methods, threats
from mat_dist.core.run_config import apply_run_overrides, config_from_dict, read_yaml, resolve_config_path
from mat_dist.data import load_splits
from mat_dist.core.trainer import Trainer, set_threads
from mat_dist.training.recorder import EpochRecorder

FULL_TRAIN_IMAGES = 3500  # MNIST-5k's 4,000 training images less the 500 held out for the check


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.depth: list[str] = []

    @contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        self.depth.append(name)
        try:
            yield
        finally:
            self.depth.pop()
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            with self.time(name):
                return fn(*args, **kwargs)

        setattr(owner, attr, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-images", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=2, help="at least 2: the first one warms up, unmeasured")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--trained", type=Path, default=None, help="a trained run folder of the same config: its "
                    "weights time the per-epoch check at the end of training")
    ap.add_argument("--output", type=Path, default=Path("prof/train-profile.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    raw = read_yaml(resolve_config_path("mnist5k-paper-mat"))
    cfg = config_from_dict(apply_run_overrides(raw, [f"data.limit_train={args.train_images}",
                                                 f"train.epochs={args.epochs}", "tracking.enabled=false",
                                                 *args.overrides]))
    threads = set_threads(args.threads or cfg.train.threads)
    t = Timers()
    with t.time("data: load"):
        splits = load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
                             limit_train=cfg.data.limit_train)
    trainer = Trainer(cfg, splits, device=torch.device("cpu"))

    # The attack: perturb (all of it), inside it the backward passes (input_gradients) and the threat models'
    # work (random start, step with its projection and box clamp); the forward passes are the rest.
    t.wrap(methods, "perturb", "attack")
    t.wrap(attacks, "input_gradients", "attack: backward")
    t.wrap(threats.L1Threat, "step", "attack: threat step (l_1)")  # its own sparse step
    t.wrap(threats.ThreatModel, "step", "attack: threat step (l_2, l_inf)")
    t.wrap(threats.ThreatModel, "random_start", "attack: random start")
    t.wrap(trainer.optimizer, "step", "outer: optimiser step")
    t.wrap(trainer, "evaluate", "per-epoch check")
    real_loss = methods.adversarial_loss

    def adversarial_loss(*a, **k):
        with t.time("adversarial_loss"):
            result = real_loss(*a, **k)
        # the outer loss's backward: the first backward on result.loss, timed by wrapping it once
        loss = result.loss
        real_backward = loss.backward

        def backward(*ba, **bk):
            with t.time("outer: backward"):
                return real_backward(*ba, **bk)

        loss.backward = backward
        return result

    import mat_dist.core.trainer as train_mod
    train_mod.adversarial_loss = adversarial_loss
    real_epoch = trainer.batches.epoch

    def epoch(e):
        it = iter(real_epoch(e))
        while True:
            with t.time("data: batches"):
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield batch

    trainer.batches.epoch = epoch
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        recorder = EpochRecorder([], metrics=Path(tmp) / "metrics.jsonl", checkpoints=Path(tmp) / "checkpoints",
                                 keep=cfg.train.checkpoints_kept)

        first: dict[str, float] = {}

        def sink(metrics, tr):
            with t.time("run folder: metrics + checkpoint"):
                recorder(metrics, tr)
            if not first:  # the first epoch warms up (oneDNN's kernels, the allocator): left out of the shares
                first.update(t.seconds)
                first.update({f"calls:{k}": v for k, v in t.calls.items()})
                first["fit"] = time.perf_counter() - start

        start = time.perf_counter()
        with t.time("fit"):
            trainer.fit(sink)
        wall = time.perf_counter() - start

    # Epochs 2.. only.
    s = defaultdict(float, {k: v - first.get(k, 0.0) for k, v in t.seconds.items()})
    n = {k: v - first.get(f"calls:{k}", 0) for k, v in t.calls.items()}
    measured_epochs = args.epochs - 1
    batches = n["adversarial_loss"]
    threat_step = sum(v for k, v in s.items() if k.startswith("attack: threat step"))
    parts = {
        "attack: forward passes": s["attack"] - s["attack: backward"] - threat_step - s["attack: random start"],
        "attack: backward passes": s["attack: backward"],
        "attack: threat models (step, projection, box)": threat_step,
        "attack: random start": s["attack: random start"],
        "outer: forward + loss": s["adversarial_loss"] - s["attack"],
        "outer: backward": s["outer: backward"],
        "outer: optimiser step": s["outer: optimiser step"],
        "data: batches": s["data: batches"],
        "per-epoch check": s["per-epoch check"],
        "run folder: metrics + checkpoint": s["run folder: metrics + checkpoint"],
    }
    parts["other (loop, schedule, metrics)"] = s["fit"] - sum(parts.values())
    per_batch = (s["fit"] - s["per-epoch check"] - s["run folder: metrics + checkpoint"]) / batches
    check_per_epoch = s["per-epoch check"] / measured_epochs
    full_batches = math.ceil(FULL_TRAIN_IMAGES / cfg.data.batch_size)
    sink_per_epoch = s["run folder: metrics + checkpoint"] / measured_epochs
    full_epoch = full_batches * per_batch + check_per_epoch + sink_per_epoch
    result = {
        "config": "mnist5k-paper-mat", "overrides": args.overrides, "train_images": args.train_images,
        "epochs": args.epochs, "batches": batches, "threads": threads, "fast_path": trainer.fast_path.describe(),
        "load_average": os.getloadavg(), "wall_s": wall,
        "shares": {k: v / s["fit"] for k, v in parts.items()},
        "seconds": parts,
        "per_batch_s": per_batch,
        "check_per_epoch_s": check_per_epoch,
        "full_epoch_projection": {"batches": full_batches, "check_share": check_per_epoch / full_epoch,
                                  "check_over_batch": check_per_epoch / per_batch},
    }
    if args.trained is not None:
        from mat_dist.core.checkpoint import load_weights
        trained = load_weights(args.trained / "model.safetensors", expect=trainer.spec)
        trainer.net.load_state_dict(trained.state_dict())
        before = t.seconds["per-epoch check"]
        trainer.evaluate()
        trained_check = t.seconds["per-epoch check"] - before
        result["trained_check"] = {"run": str(args.trained), "check_s": trained_check,
                                   "check_over_batch": trained_check / per_batch,
                                   "full_epoch_check_share": trained_check / (full_batches * per_batch
                                                                             + trained_check + sink_per_epoch)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    for k, v in sorted(result["shares"].items(), key=lambda kv: -kv[1]):
        print(f"{100 * v:6.1f}%  {k}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("shares", "seconds")}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
