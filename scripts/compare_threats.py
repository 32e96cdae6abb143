"""The threat models of another commit against this tree's, interleaved in one process: the l_1 projection, the
l_1 step, and a training batch of MAT and of AT in l_1 with either set (AT in l_inf beside them, unchanged).

    python scripts/compare_threats.py --ref main [--rounds 15] [--threads 2] [--output before-after.json]

``--ref``'s mat_dist/core/threats.py is loaded from git as a module of its own; everything else (network, attack
loop, optimiser) is this tree's, so the differences are the threat models'. Cases run round-robin (A, B, C, A,
B, C, ...) after warm-up rounds, the bench's settings (mat_dist.bench.method_costs: MSD CNN, batch 64, M=3, K=10).
Medians; ratios of cases timed in this one run. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mat_dist.core import threats as new
from mat_dist.bench.method_costs import BenchSettings, _Case, machine_info, summary_stats, time_interleaved
from mat_dist.bench.projection import POINTS, pgd_points

REPO = Path(__file__).resolve().parent.parent


def load_threats(ref: str):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:mat_dist/core/threats.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "threats_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("threats_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def stats(values: list[float]) -> dict[str, float]:
    """Median, min, max and spread ((max - min) / median) in the values' own unit."""
    row = summary_stats(values)
    return {"median": row["median_s"], "min": row["min_s"], "max": row["max_s"], "spread": row["spread"],
            "n": row["n"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="git revision whose threat models are the 'old' ones")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the bench uses every core: 2 here)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old = load_threats(args.ref)
    s = BenchSettings(repeats=args.rounds)

    # The projection and the l_1 step alone, on the PGD points of the bench's projection part (batch x M rows).
    threat, x, points = pgd_points(s, s.batch_size * s.num_members)
    old_threat = old.L1Threat(eps=threat.eps, alpha=threat.alpha)

    def each(fn):
        return lambda: [fn(i, *p) for i, p in enumerate(points)]

    micro = {
        "projection_old": each(lambda i, d, g, m: old.project_l1_ball(m, threat.eps)),
        "projection_new": each(lambda i, d, g, m: new.project_l1_ball(m, threat.eps)),
        "l1_step_old": each(lambda i, d, g, m: old_threat.step(d, g, x, torch.Generator().manual_seed(i))),
        "l1_step_new": each(lambda i, d, g, m: threat.step(d, g, x, torch.Generator().manual_seed(i))),
    }
    for i, (d, g, m) in enumerate(points):  # the same results, to float rounding
        assert torch.allclose(old.project_l1_ball(m, threat.eps), new.project_l1_ball(m, threat.eps), atol=1e-5)
    micro_times = time_interleaved(micro, repeats=max(3 * args.rounds, 30), warmup=3, device="cpu")

    # Training batches: AT in l_inf (no l_1 work: the reference), MAT and AT in l_1 with each set of threat models.
    def with_old(case: _Case) -> _Case:
        case.threats = [old.make_threat(t.norm_kind.value, eps=t.eps, alpha=t.alpha) for t in case.threats]
        return case

    cases = {"at": _Case("at", s), "mat_old": with_old(_Case("mat", s)), "mat_new": _Case("mat", s),
             "at_l1_old": with_old(_Case("at_l1", s)), "at_l1_new": _Case("at_l1", s)}
    batch_times = time_interleaved({k: c.step for k, c in cases.items()}, repeats=args.rounds, warmup=s.warmup,
                                   device="cpu")

    med = {k: statistics.median(v) for k, v in {**micro_times, **batch_times}.items()}
    result = {
        "ref": args.ref, "machine": machine_info("cpu"), "rounds": {"micro": len(micro_times["projection_old"]),
                                                                     "batches": args.rounds},
        "micro_us_per_call": {k: stats([t / POINTS * 1e6 for t in v]) for k, v in micro_times.items()},
        "batch_ms": {k: stats([t * 1e3 for t in v]) for k, v in batch_times.items()},
        "ratios": {
            "l1_projection_new_over_old": med["projection_new"] / med["projection_old"],
            "l1_step_new_over_old": med["l1_step_new"] / med["l1_step_old"],
            "mat_over_at_old": med["mat_old"] / med["at"], "mat_over_at_new": med["mat_new"] / med["at"],
            "mat_new_over_old": med["mat_new"] / med["mat_old"],
            "at_l1_new_over_old": med["at_l1_new"] / med["at_l1_old"],
        },
    }
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(json.dumps(result["ratios"], indent=2))
    for k, v in {**result["micro_us_per_call"], **result["batch_ms"]}.items():
        print(f"{k:16s} median {v['median']:10.1f}  spread {100 * v['spread']:5.0f}%")


if __name__ == "__main__":
    main()
