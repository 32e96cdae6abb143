"""Files a crash cannot leave half-written: whole-or-absent files, and JSON-lines records.

- ``atomic_path`` / ``write_atomic``: write to a temporary sibling, then rename
  into place (one ``os.replace``, atomic on POSIX), so a reader sees the old
  file or the new one, never part of either.
- ``append_jsonl`` / ``read_jsonl``: one JSON object per line, each line
  flushed and fsynced; a line cut by a crash ends the file's readable part.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path, *, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or an exception inside the block leaves ``path`` as it was (the
    rename is atomic on POSIX) and removes the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def jsonl_line(row: dict[str, Any]) -> str:
    """One record as its line: keys sorted, so equal records are equal bytes."""
    return json.dumps(row, sort_keys=True) + "\n"


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(jsonl_line(r) for r in rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] when it does not exist), up to the first unreadable line."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the file's valid part
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one record and fsync it (the folder is made when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(jsonl_line(row))
        f.flush()
        os.fsync(f.fileno())


def probe_writable(folder: Path) -> None:
    """OSError unless ``folder`` exists and takes a file, or could be made: its nearest existing ancestor is a
    folder that takes one. Creates nothing that outlives the call, so a refused command leaves no empty folder."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(20, os.strerror(20), str(existing))
    with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
        pass
