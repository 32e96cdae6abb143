"""``matd``: train, evaluate and tune MIMO ensembles against several attack norms.

Each command is thin: parse options, call the library, print. A ``UserError``
becomes one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mat_dist.errors import UserError

app = typer.Typer(
    name="matd",
    help="mat-dist: adversarially trained MIMO ensembles (MAT) robust to l_inf, l_2 and l_1 attacks at once.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Config YAML file, or the name of a shipped config (e.g. mnist5k-mat)."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Run folder (default: runs/<config name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Config overrides key.sub=value, e.g. train.epochs=3 attack.eps=[5,1,0.1]."),
) -> None:
    """Train a model on this machine; writes config, metrics.jsonl, checkpoints and the final model."""
    from cli.train_cmd import run_train

    run_train(config=config, output=output, resume=resume, tracking_uri=tracking_uri,
              overrides=list(overrides or []))


@app.command("configs")
def list_configs() -> None:
    """List the configs that ship with mat-dist."""
    from mat_dist.config import SHIPPED_CONFIGS

    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        first = path.read_text().splitlines()[0].lstrip("# ").strip()
        typer.echo(f"{path.stem:24s} {first}")


@app.command("methods")
def list_methods() -> None:
    """List the training methods."""
    from mat_dist.methods import METHODS

    for method in METHODS.values():
        typer.echo(f"{method.name:14s} {method.description}")


def main() -> None:
    try:
        app()
    except UserError as err:
        typer.echo(f"matd: error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("matd: interrupted; --resume continues from the last whole checkpoint", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
