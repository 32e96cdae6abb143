"""The house rules of DESIGN.md and README.md's Architecture that code review alone lets slip: nothing runs at
import time, the method (mat_dist/core) imports neither Ray nor MLflow, only threat models branch on the norm,
every module stands in one layer and imports only from its own package or the layers below, and no import
circle exists, function-level imports counted."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import importlib.util

import mat_dist

PACKAGE = Path(mat_dist.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
# The method: the Trainer, its loop and all it calls per batch: no Ray, no MLflow, not even inside a function.
CORE = PACKAGE / "core"
# Lowest first. A module may import its own package and the layers below, never a layer above nor another
# package of its own layer (the runners training and evaluate stay independent of each other).
LAYERS = (
    ("plumbing", ("mat_dist.plumbing",)),
    ("data", ("mat_dist.data",)),
    ("the method", ("mat_dist.core",)),
    ("cluster", ("mat_dist.cluster",)),
    ("runners", ("mat_dist.training", "mat_dist.evaluate")),
    ("bench", ("mat_dist.bench",)),
    ("reproduction", ("mat_dist.reproduce",)),
    ("sweeps", ("mat_dist.tune",)),
)
ENTRY_POINTS = ("mat_dist", "mat_dist.file_kinds", "mat_dist.cli")  # the top: the API, matd validate, the CLI
THREAT_CLASSES = {"ThreatModel", "LinfThreat", "L2Threat", "L1Threat"}

IMPORT_ALL = """
import importlib, pkgutil, sys
import mat_dist, mat_dist.cli
names = {m.name for p in (mat_dist, mat_dist.cli) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")}
for name in sorted(names):
    importlib.import_module(name)
print(len(names), *sorted(m for m in ("ray", "mlflow") if m in sys.modules))
"""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_importing_every_module_starts_neither_ray_nor_mlflow() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, check=True).stdout
    count, *heavy = out.split()
    assert int(count) > 50 and heavy == [], out


def test_the_method_never_imports_ray_or_mlflow() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        assert not _imports(path) & {"ray", "mlflow"}, path


def _graph():
    """scripts/import_graph.py's graph of this checkout: every import edge, function-level ones included."""
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module, module.read_graph()


def _layer(module: str) -> tuple[int, str]:
    """(layer index, package) of a module; the entry points stand above every layer."""
    for index, (_, packages) in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return index, package
    top = next((p for p in ENTRY_POINTS[1:] if module == p or module.startswith(p + ".")), None)
    assert top or module == "mat_dist", f"{module} stands in no layer: name it in LAYERS or ENTRY_POINTS"
    return len(LAYERS), top or "mat_dist"


def test_every_import_runs_down_the_layers() -> None:
    _, graph = _graph()
    assert len(graph.modules) > 50 and len(graph.edges) > 200
    offenders = []
    for a, b in sorted(graph.edges):
        (layer_a, package_a), (layer_b, package_b) = _layer(a), _layer(b)
        if layer_b > layer_a or (layer_b == layer_a < len(LAYERS) and package_a != package_b):
            offenders.append(f"{a} -> {b}")
    assert offenders == []


def test_no_import_circle_even_inside_functions() -> None:
    module, graph = _graph()
    assert module._cycles(graph.modules, graph.edges) == []


def test_a_circle_or_an_upward_import_would_be_seen() -> None:
    """The two tests above can fail: a made-up edge from the method up to a sweep is both."""
    module, graph = _graph()
    edges = graph.edges | {("mat_dist.core.trainer", "mat_dist.tune.sweep")}
    assert module._cycles(graph.modules, edges) != []
    assert _layer("mat_dist.tune.sweep")[0] > _layer("mat_dist.core.trainer")[0]


def test_only_threat_models_ask_which_threat_model_they_hold() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "threats.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                if any(getattr(k, "id", None) in THREAT_CLASSES for k in kinds):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def _missing_names(path: Path) -> list[str]:
    """The ``from mat_dist... import X`` and ``import mat_dist...`` of ``path`` that do not resolve."""
    import importlib

    missing = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mat_dist"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                submodule = hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}")
                if not hasattr(module, alias.name) and not submodule:
                    missing.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            missing += [a.name for a in node.names if a.name.startswith("mat_dist") and _spec(a.name) is None]
    return missing


def _spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent is missing
        return None


def test_every_script_imports_names_that_exist(tmp_path: Path) -> None:
    """The scripts (profiles, the study's helpers) run outside the tests: a rename must not leave them behind."""
    scripts = sorted((ROOT / "scripts").glob("*.py"))
    assert scripts
    assert {s.name: m for s in scripts if (m := _missing_names(s))} == {}
    stale = tmp_path / "stale.py"
    stale.write_text("from mat_dist.core.run_config import apply_overrides\nimport mat_dist.nowhere\n")
    assert _missing_names(stale) == ["mat_dist.core.run_config.apply_overrides", "mat_dist.nowhere"]
