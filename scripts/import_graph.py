"""The shape of mat-dist's import graph: modules, lines, internal import edges and cycles.

    python scripts/import_graph.py              # the working tree
    python scripts/import_graph.py --rev HEAD   # a commit, read through git (no checkout needed)
    python scripts/import_graph.py --edges      # also list every edge

A module is a .py file of the package mat_dist, with the folders that
pyproject.toml maps into it (cli/ -> mat_dist.cli, clusters/ -> mat_dist.clusters,
tune_spaces/ -> mat_dist.tune_spaces). Lines are all lines of those files. An
edge is a pair (A, B) of mat_dist modules where A's source holds an import of B
anywhere (module level, inside a function, under TYPE_CHECKING): each pair once.
``from mat_dist.x import y`` is an edge to mat_dist.x.y when that is a module,
else to mat_dist.x. Cycles are the strongly connected components of more than
one module, reported twice: over every edge, and over the edges that run at
import time (module level, outside ``if TYPE_CHECKING``), the ones that can
break an import.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> its package name in the wheel (pyproject.toml's package-dir)
MAPPED = {"mat_dist": "mat_dist", "cli": "mat_dist.cli", "clusters": "mat_dist.clusters",
          "tune_spaces": "mat_dist.tune_spaces"}


def _files(rev: str | None) -> dict[str, str]:
    """Repository path -> source text of every Python file under the mapped folders."""
    if rev is None:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *MAPPED],
                                cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
        return {p: (ROOT / p).read_text() for p in listed if p.endswith(".py") and (ROOT / p).is_file()}
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *MAPPED],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    return {p: subprocess.run(["git", "show", f"{rev}:{p}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout for p in listed if p.endswith(".py")}


def _module_name(path: str) -> str:
    top, *rest = Path(path).with_suffix("").parts
    parts = [MAPPED[top], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, modules: set[str], package: str) -> list[tuple[str, bool]]:
    """(imported mat_dist module, runs at import time) for every import statement in ``tree``."""
    found: list[tuple[str, bool]] = []

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            top = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, top)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mat_dist" and (target := resolve(alias.name)):
                    found.append((target, top))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "mat_dist":
                for alias in node.names:
                    target = resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules else resolve(base)
                    if target:
                        found.append((target, top))
        for child in ast.iter_child_nodes(node):
            visit(child, top)

    visit(tree, True)
    return found


def _cycles(nodes: set[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted, largest first."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return sorted(out, key=lambda c: (-len(c), c))


class Graph(NamedTuple):
    """mat-dist's modules and the import edges between them (each pair once)."""

    files: dict[str, str]                 # repository path -> source
    modules: set[str]
    edges: set[tuple[str, str]]           # every import: module level, inside functions, TYPE_CHECKING
    import_time: set[tuple[str, str]]     # only those that run when the importing module is imported


def read_graph(rev: str | None = None) -> Graph:
    """The import graph of the working tree, or of the commit ``rev``."""
    files = _files(rev)
    names = {path: _module_name(path) for path in files}
    modules = set(names.values())
    edges: set[tuple[str, str]] = set()
    import_time: set[tuple[str, str]] = set()
    for path, source in files.items():
        name = names[path]
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        for target, top in _imports(ast.parse(source, filename=path), modules, package):
            if target != name:
                edges.add((name, target))
                if top:
                    import_time.add((name, target))
    return Graph(files, modules, edges, import_time)


def longest_functions(files: dict[str, str], count: int) -> list[tuple[int, str]]:
    """(lines, path:qualified name) of the ``count`` longest functions and methods."""
    found = []
    for path, source in files.items():
        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        found.append((child.end_lineno - child.lineno + 1, f"{path}:{name}"))
                    visit(child, name + ".")
        visit(ast.parse(source, filename=path), "")
    return sorted(found, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a git revision to read instead of the working tree")
    parser.add_argument("--edges", action="store_true", help="list every edge")
    parser.add_argument("--longest", type=int, default=5, help="list this many longest functions")
    args = parser.parse_args()
    files, modules, edges, import_time = read_graph(args.rev)
    lines = sum(len(s.splitlines()) for s in files.values())
    print(f"source: {args.rev or 'working tree'}")
    print(f"modules: {len(modules)}")
    print(f"lines: {lines}")
    print(f"internal import edges: {len(edges)} ({len(import_time)} at import time, "
          f"{len(edges) - len(import_time)} inside functions or TYPE_CHECKING only)")
    for label, chosen in (("every edge", edges), ("import-time edges", import_time)):
        found = _cycles(modules, chosen)
        print(f"cycles over {label}: {len(found)}")
        for component in found:
            print("  " + " <-> ".join(component))
    print(f"longest functions:")
    for length, where in longest_functions(files, args.longest):
        print(f"  {length:4d}  {where}")
    if args.edges:
        for a, b in sorted(edges):
            print(f"{a} -> {b}{'' if (a, b) in import_time else '  (lazy)'}")


if __name__ == "__main__":
    main()
