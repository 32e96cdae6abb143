"""``matd bench``: cost of every training method, the fast path, the evaluator and Ray Train, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mat_dist.plumbing.console import plural

PARTS = ("methods", "switches", "projection", "evaluator", "ray_train")


def parse_parts(text: str) -> list[str]:
    from mat_dist.plumbing.errors import UserError

    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return list(PARTS)
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        raise UserError(f"--parts: unknown part {', '.join(unknown) or '(none given)'}; "
                        f"use some of {', '.join(PARTS)}, or all")
    return names


def parse_methods(text: str | None) -> tuple[str, ...]:
    """--methods: a comma-separated subset of the methods part's methods (None: all of them)."""
    from mat_dist.bench.method_costs import BENCH_METHODS
    from mat_dist.plumbing.errors import UserError

    if text is None:
        return BENCH_METHODS
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in BENCH_METHODS]
    if unknown or not names:
        raise UserError(f"--methods: unknown method {', '.join(unknown) or '(none given)'}; "
                        f"use some of {', '.join(BENCH_METHODS)}")
    return names


def run_bench(*, output: Path | None, parts: str, device: str, backbone: str, batch_size: int, members: int,
              steps: int, repeats: int, image_size: int, channels: int, model: Path, suite: str,
              eval_examples: int, train_config: str, train_overrides: list[str],
              methods: str | None = None) -> None:
    from mat_dist.bench.method_costs import BenchSettings, bench_methods, machine_info
    from mat_dist.plumbing.atomic import write_atomic
    from mat_dist.core.trainer import resolve_device, set_threads

    chosen = parse_parts(parts)
    method_names = parse_methods(methods)
    set_threads(None)
    settings = BenchSettings(backbone=backbone, image_shape=(channels, image_size, image_size),
                             batch_size=batch_size, num_members=members, steps=steps, repeats=repeats,
                             device=str(resolve_device(device)))
    # Inputs of the later parts are checked before the first part spends minutes.
    if "evaluator" in chosen:
        _check_model(model)
    cfg = _train_config(train_config, train_overrides) if "ray_train" in chosen else None

    result: dict[str, Any] = {"parts": chosen, "machine": machine_info(settings.device), "ratios": {}}
    if "methods" in chosen:
        timed = bench_methods(settings, method_names)
        result.update(timed)
        _echo_methods(timed)
    if "switches" in chosen:
        from mat_dist.bench.method_costs import bench_switches

        result["switches"] = bench_switches(settings)
        for name, row in result["switches"]["switches"].items():
            if "error" in row:
                typer.echo(f"switch {name:14s} failed: {row['error']}")
            else:
                used = f"  ({row['fast_path']})" if "fast_path" in row else ""
                typer.echo(f"switch {name:14s} {1000 * row['median_s']:9.1f} ms/batch  "
                           f"x{row['ratio_to_baseline']:.3f} of baseline{used}")
        result["ratios"].update(result["switches"].get("ratios", {}))
    if "projection" in chosen:
        from mat_dist.bench.projection import bench_l1_projection

        result["projection"] = bench_l1_projection(settings)
        for name, row in result["projection"]["cases"].items():
            typer.echo(f"l1 {name:22s} {1e6 * row['median_s']:9.1f} us/call (spread {100 * row['spread']:.0f}%)")
        result["ratios"].update(result["projection"]["ratios"])
    if "evaluator" in chosen:
        from mat_dist.bench.parallel import bench_evaluator

        typer.echo(f"evaluator: suite {suite} on {eval_examples} test images, model {model}")
        result["evaluator"] = bench_evaluator(model, suite_name=suite, examples=eval_examples,
                                              repeats=max(1, min(repeats, 3)))
        for name, row in result["evaluator"]["attacks"].items():
            typer.echo(f"  {name:18s} {row['examples_per_s']:8.1f} examples/s (spread {100 * row['spread']:.0f}%)")
        result["ratios"].update(result["evaluator"].get("ratios", {}))
    if "ray_train" in chosen:
        from mat_dist.bench.parallel import bench_ray_train

        typer.echo(f"ray_train: {cfg.name}, {plural(cfg.train.epochs, 'epoch')} on {cfg.data.limit_train or 'all'} "
                   f"training images, in-process / 1 Ray worker / 2 Ray workers, interleaved")
        result["ray_train"] = bench_ray_train(cfg, repeats=2)
        for path, row in result["ray_train"]["paths"].items():
            typer.echo(f"  {path:14s} epoch {row['epoch_s']['median_s']:6.1f} s  wall {row['wall_s']['median_s']:6.1f} s")
        result["ratios"].update(result["ray_train"]["ratios"])
    for key, value in result["ratios"].items():
        typer.echo(f"{key:36s} {value:.3f}")
    if output is not None:
        write_atomic(output, json.dumps(result, indent=2))
        typer.echo(f"wrote {output}")


def _echo_methods(result: dict[str, Any]) -> None:
    for name, row in result["methods"].items():
        typer.echo(f"{name:12s} {1000 * row['median_s']:9.1f} ms/batch (spread {100 * row['spread']:.0f}%)  "
                   f"passes {row['forward_passes']}/{row['backward_passes']} "
                   f"(Table 6: {row['table6_forward']}/{row['table6_backward']})")


def _check_model(model: Path) -> None:
    from mat_dist.core.checkpoint import find_weights, load_model
    from mat_dist.plumbing.errors import UserError

    try:
        load_model(find_weights(model))  # a missing or foreign file: one line now, not after the methods part
    except UserError as err:
        raise UserError(f"--model (the evaluator part's model): {err}; train one first "
                        f"(scripts/main.sh writes runs/mnist5k-mat)") from None


def _train_config(name: str, overrides: list[str]):
    from mat_dist.core.run_config import load_config

    return load_config(name, overrides)
