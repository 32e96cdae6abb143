"""``matd validate FILE``: check a config, cluster file, suite or search space as the command that reads it would."""

from __future__ import annotations

import typer

from mat_dist.errors import UserError
from mat_dist.file_kinds import FileKind, validate_file


def run_validate(*, file: str, kind: str | None) -> None:
    """Print 'FILE: valid <kind> (...)'; for a bad file, its one error line and exit code 1."""
    try:
        typer.echo(validate_file(file, None if kind is None else FileKind(kind)))
    except UserError as err:
        typer.echo(f"matd: error: {err}", err=True)
        raise typer.Exit(1) from None
