"""``matd tune``: options -> search space x base config -> a Ray Tune sweep; prints the table's gist and the best config."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mat_dist.plumbing.console import plural


def run_tune(*, space: str | None, config: str | None, cluster: str | None, trials: int | None, output: Path | None,
             resume: bool, tracking_uri: str | None, overrides: list[str], tracking: bool = True,
             fidelity: int | None = None,
             confirm: int = 0, confirm_suite: str = "field", confirm_examples: int | None = None,
             time_budget: float | None = None) -> None:
    from mat_dist.plumbing.errors import UserError
    from mat_dist.tune.space import load_space

    if space is None and not resume:
        raise UserError("give --space FILE (a search space YAML, or a shipped name: mnist5k-cpu, mnist5k-paper, "
                        "mnist-paper, cifar10-paper)")
    if resume and output is None:
        raise UserError("--resume needs --output DIR, the folder of the sweep to continue")
    if resume and (config is not None or overrides or not tracking):
        raise UserError("--resume continues the sweep with the base config it started with; drop --config, "
                        "--no-tracking and the overrides")
    if cluster == "none":
        raise UserError("--cluster none: a sweep runs its trials on Ray; drop --cluster for a local Ray runtime, "
                        "or give a cluster file")
    if trials is not None and trials < 1:
        raise UserError(f"--trials {trials} must be at least 1")
    if confirm < 0 or (confirm_examples is not None and confirm_examples < 1):
        raise UserError("--confirm must be 0 or more and --confirm-examples at least 1")
    overrides = overrides + ([] if tracking else ["tracking.enabled=false"])
    loaded = load_space(space) if space is not None else None  # a bad space fails before Ray starts
    if output is None:
        output = Path("runs") / f"tune-{Path(loaded.source).stem}"
    if loaded is not None and not resume:
        # Validate space x base before the (slow) Ray start: one line for a bad key or value.
        from mat_dist.tune.sweep import base_config

        loaded.check_against(loaded.base_raw(base_config(loaded, config), overrides))
    if confirm:
        from mat_dist.evaluate.suite import load_suite

        load_suite(confirm_suite)  # a bad suite name fails before the sweep, not after it

    from mat_dist.tune.sweep import SweepSettings, run_sweep

    typer.echo(f"{'resuming' if resume else 'starting'} sweep {output}"
               + (f" over {', '.join(loaded.keys)} ({loaded.source})" if loaded else ""))
    result = run_sweep(loaded, SweepSettings(output=output, base=config, overrides=overrides, cluster=cluster,
                                             trials=trials, resume=resume, tracking_uri=tracking_uri, verbose=1,
                                             fidelity=fidelity, confirm=confirm, confirm_suite=confirm_suite,
                                             confirm_examples=confirm_examples, echo=typer.echo,
                                             time_budget_s=time_budget))
    rows = result.rows
    typer.echo(f"{plural(len(rows), 'trial')} in {result.wall_s:.0f} s: {result.stopped_early} stopped early by ASHA, "
               f"{sum(r['status'] == 'ERROR' for r in rows)} failed; table {output / 'trials.csv'}")
    if result.interrupted:
        typer.echo(f"matd: interrupted; continue with: matd tune --output {output} --resume", err=True)
        sys.exit(130)
    if result.best is None:
        raise UserError(f"no eligible trial: none finished an epoch within objective.max_cost; see trials.csv and "
                        f"the trials' errors under {output / 'ray'}")
    b = result.best
    typer.echo(f"best trial {b['trial_id']}: validation union robust accuracy {100 * b['objective']:.1f}% "
               f"(clean {100 * b['val/clean_acc']:.1f}%) at the base config's eval radii")
    for key, value in b.items():
        if key.startswith("param/"):
            typer.echo(f"  {key[6:]} = {value}")
    typer.echo(f"best config: {result.best_config}  (matd train --config {result.best_config})")
    typer.echo(f"Pareto front of robustness against training cost: {plural(len(result.front), 'trial')}, "
               f"{output / 'pareto.csv'}")
    if result.fidelity is not None:
        rho, n = result.fidelity.spearman, sum(r["complete"] for r in result.fidelity.rows)
        told = f"Spearman rho {rho:.2f}" if rho == rho else "rank correlation undefined (under 3 trials or ties)"
        typer.echo(f"proxy fidelity: {told} over {plural(n, 'trial')} re-trained at the full budget "
                   f"({output / 'fidelity.csv'})")
    if result.confirm is not None:
        typer.echo(f"confirmation on the test images: {result.confirm.verdict}")
    typer.echo(f"report: {result.report}")
