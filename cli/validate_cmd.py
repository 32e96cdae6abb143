"""``matd validate FILE``: check a config, cluster file, suite, search space or models file as its command would."""

from __future__ import annotations

import typer

from mat_dist.file_kinds import FileKind, validate_file


def run_validate(*, file: str, kind: str | None) -> None:
    """Print 'FILE: valid <kind> (...)'; a bad file raises its one UserError line (exit code 2, as every mistake)."""
    typer.echo(validate_file(file, None if kind is None else FileKind(kind)))
