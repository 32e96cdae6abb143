"""Plumbing for the paths a user names: a YAML file by its path or by a shipped name, and a path as a report shows it.

Imports nothing of mat-dist's but its errors, so that every kind of file
(run configs, cluster files, suites, search spaces) and every report can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from mat_dist.plumbing.errors import UserError


def find_yaml(name_or_path: str | os.PathLike, shipped: Path) -> Path | None:
    """A YAML file given by its path, or by the name of one that ships in folder ``shipped``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = shipped / f"{name_or_path}.yaml"
    return candidate if candidate.is_file() else None


def shipped_names(shipped: Path) -> str:
    """The names of the YAML files in ``shipped``, for error messages."""
    return ", ".join(sorted(p.stem for p in shipped.glob("*.yaml"))) or "none found"


def resolve_yaml(name_or_path: str | os.PathLike, shipped: Path, *, kind: str, shipped_as: str | None = None,
                 missing: str | None = None) -> Path:
    """The YAML file ``name_or_path`` names (a path, or a name shipped in ``shipped``); else a UserError line:
    "<kind> 'NAME' is neither a file nor a shipped <shipped_as or kind> (the shipped names)", or ``missing``
    formatted with ``{name}`` and ``{names}`` where a kind says more (a cluster may also be an address)."""
    path = find_yaml(name_or_path, shipped)
    if path is not None:
        return path
    names = shipped_names(shipped)
    if missing is not None:
        raise UserError(missing.format(name=name_or_path, names=names))
    raise UserError(f"{kind} {str(name_or_path)!r} is neither a file nor a shipped {shipped_as or kind} ({names})")


def as_given(path: str | os.PathLike, *, cwd: str | os.PathLike | None = None) -> str:
    """``path`` as a report names it: relative to the folder the command ran in (``cwd``, default the
    current one) when it lies under it, else as given; so a report holds no absolute path of this machine
    for what the user named from where they stood."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    here = Path(cwd if cwd is not None else Path.cwd()).resolve()
    try:
        return Path(text).resolve().relative_to(here).as_posix()
    except ValueError:  # not under it (or another drive)
        return text
