"""The l_1 projection alone: sort-and-threshold against Michelot's fixed point, and the l_1 step, interleaved.

The points are the ones PGD projects: a point of the l_1 ball (a random start,
then steps) plus one top-k step of mass alpha, for batch x M rows of an
MNIST-sized image (784 coordinates) at the bench's l_1 radius. Both
projections run on the same points, in rounds (sort, fixed point, sort, ...),
so that a drift of the machine hits both alike. Nothing here asserts on time.
"""

from __future__ import annotations

from typing import Any

import torch

from mat_dist.bench.method_costs import THREAT_TABLE, BenchSettings, machine_info, summary_stats, time_interleaved
from mat_dist.core.threats import L1Threat, Norm, ThreatModel, project_l1_ball_fixed_point, project_l1_ball_sort

POINTS = 10  # PGD steps whose pre-projection points are timed (one call of each case projects all of them)


def pgd_points(s: BenchSettings, rows: int) -> tuple[L1Threat, torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """x (rows, C, H, W) and POINTS (delta, grad, moved) triples of a PGD l_1 run on random gradients."""
    eps, alpha = THREAT_TABLE[Norm.L1]
    threat = L1Threat(eps=eps, alpha=alpha)
    gen = torch.Generator(device=s.device).manual_seed(0)
    x = torch.rand(rows, *s.image_shape, generator=gen, device=s.device)
    delta = threat.random_start(x, gen)
    points = []
    for i in range(POINTS):
        grad = torch.randn(x.shape, generator=gen, device=s.device)
        step_gen = torch.Generator(device=s.device).manual_seed(i)
        moved = delta + threat.alpha * threat.direction(grad, x + delta, step_gen)
        points.append((delta, grad, moved))
        delta = threat.step(delta, grad, x, torch.Generator(device=s.device).manual_seed(i))
    return threat, x, points


def bench_l1_projection(s: BenchSettings) -> dict[str, Any]:
    """Seconds per projection of (batch x M) rows, sort against fixed point, and per l_1 step, dense (the
    generic ThreatModel.step: a dense direction scaled and added) against sparse (L1Threat.step), both steps
    with this device's projection. Also the largest difference between the two projections."""
    rows = s.batch_size * s.num_members
    threat, x, points = pgd_points(s, rows)
    device = torch.device(s.device)

    def each(fn):
        def run() -> None:
            for i, point in enumerate(points):
                fn(i, *point)
        return run

    cases = {
        "projection_sort": each(lambda i, d, g, moved: project_l1_ball_sort(moved, threat.eps)),
        "projection_fixed_point": each(lambda i, d, g, moved: project_l1_ball_fixed_point(moved, threat.eps)),
        "step_dense": each(lambda i, d, g, moved: ThreatModel.step(
            threat, d, g, x, torch.Generator(device=device).manual_seed(i))),
        "step_sparse": each(lambda i, d, g, moved: threat.step(d, g, x, torch.Generator(device=device).manual_seed(i))),
    }
    times = time_interleaved(cases, repeats=max(s.repeats, 15), warmup=s.warmup, device=s.device)
    gap = max(float((project_l1_ball_sort(m, threat.eps) - project_l1_ball_fixed_point(m, threat.eps)).abs().max())
              for _, _, m in points)
    outside = sum(float((m.flatten(1).abs().sum(1) > threat.eps).float().mean()) for _, _, m in points) / POINTS
    rows_out = {name: summary_stats([t / POINTS for t in times[name]]) for name in cases}
    med = {name: row["median_s"] for name, row in rows_out.items()}
    return {
        "settings": {**s.__dict__, "rows": rows, "coordinates": int(x[0].numel()), "eps": threat.eps,
                     "alpha": threat.alpha, "points": POINTS},
        "machine": machine_info(s.device),
        "cases": rows_out,
        "max_abs_difference": gap,
        "rows_outside_share": outside,
        "ratios": {"l1_projection_fixed_point_over_sort": med["projection_fixed_point"] / med["projection_sort"],
                   "l1_step_sparse_over_dense": med["step_sparse"] / med["step_dense"]},
    }
