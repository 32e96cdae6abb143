"""``matd bench``: cost of every training method side by side, as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def run_bench(*, output: Path | None, device: str, backbone: str, batch_size: int, members: int, steps: int,
              repeats: int, image_size: int, channels: int) -> None:
    from mat_dist.bench import BenchSettings, bench_methods
    from mat_dist.runner import write_atomic
    from mat_dist.train import resolve_device, set_threads

    set_threads(None)
    settings = BenchSettings(backbone=backbone, image_shape=(channels, image_size, image_size),
                             batch_size=batch_size, num_members=members, steps=steps, repeats=repeats,
                             device=str(resolve_device(device)))
    result = bench_methods(settings)
    for name, row in result["methods"].items():
        typer.echo(f"{name:12s} {1000 * row['median_s']:9.1f} ms/batch (spread {100 * row['spread']:.0f}%)  "
                   f"passes {row['forward_passes']}/{row['backward_passes']} "
                   f"(Table 6: {row['table6_forward']}/{row['table6_backward']})")
    for key, value in result["ratios"].items():
        typer.echo(f"{key:18s} {value:.3f}")
    if output is not None:
        write_atomic(output, json.dumps(result, indent=2))
        typer.echo(f"wrote {output}")
