"""How far the cheap per-epoch check is from a full evaluation, on the same test images.

Runs the run's own per-epoch check (``eval.attack``, ``eval.steps``, ``eval.targets``) on the first N
MNIST-5k test images and prints its figures beside those of an evaluation folder's summary.json over
the same images (e.g. the field suite's full-strength APGD-CE + APGD-T).

    python scripts/check_gap.py RUN_FOLDER EVAL_FOLDER
"""

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch

from mat_dist.core.checkpoint import load_weights
from mat_dist.core.run_config import load_config
from mat_dist.data import load_splits
from mat_dist.evaluate.metrics import union_summary
from mat_dist.core.epoch_check import describe_check, robust_counts


def main(run: Path, evaluation: Path) -> None:
    cfg = load_config(run / "config.yaml")
    results = pq.read_table(evaluation / "results.parquet")
    n = json.loads((evaluation / "summary.json").read_text())["examples"]
    splits = load_splits(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed)
    x, y = splits.test.images[:n], splits.test.labels[:n]
    net = load_weights(run / "model.safetensors")
    counts = robust_counts(net, x, y, dict(cfg.eval.eps), attack=cfg.eval.attack, steps=cfg.eval.steps,
                           targets=cfg.eval.targets, generator=torch.Generator().manual_seed(0), seed=0)
    full = union_summary(results)
    print(f"{n} test images; check: {describe_check(cfg.eval.attack, cfg.eval.steps, cfg.eval.targets)}; "
          f"full: {evaluation}")
    print("| figure | per-epoch check (%) | full suite (%) | gap (points) |")
    print("|---|---:|---:|---:|")
    for norm in [n_.value for n_ in cfg.eval.eps] + ["all"]:
        cheap = 100 * float(counts[f"val/robust_{norm}"]) / n
        strong = 100 * full["all_attacks" if norm == "all" else f"all_{norm}"]
        print(f"| {'all_attacks' if norm == 'all' else 'all_' + norm} | {cheap:.1f} | {strong:.1f} | {cheap - strong:+.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
