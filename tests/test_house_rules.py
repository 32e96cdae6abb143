"""The house rules of DESIGN.md that code review alone lets slip: nothing runs at import time, the training
loop and the attacks import neither Ray nor MLflow, only threat models branch on the norm."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mat_dist

PACKAGE = Path(mat_dist.__file__).parent
# The loop and what it calls per batch: no Ray, no MLflow, not even inside a function.
CORE = ("train.py", "attacks.py", "threats.py", "methods.py", "validation.py", "fastpath.py")
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


def test_the_loop_and_the_attacks_never_import_ray_or_mlflow() -> None:
    for name in CORE:
        assert not _imports(PACKAGE / name) & {"ray", "mlflow"}, name


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
