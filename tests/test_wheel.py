"""The wheel works: its only top-level package is mat_dist, and installed from it (outside the repository)
every shipped name resolves and ``matd`` runs.

Two cheap checks guard the same rules in the source tree: pyproject.toml lists every package (a folder
mapped through package-dir cannot be discovered, so a new package must be listed by hand), and the
command line is imported once, as mat_dist.cli, with the shipped files read from the repository's folders.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"mat_dist.cli": "cli", "mat_dist.clusters": "clusters", "mat_dist.tune_spaces": "tune_spaces"}
DATA = ("*.yaml", "*.csv")


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _source_packages() -> dict[str, Path]:
    """Every package the wheel must hold -> its folder: mat_dist's folders with code or data, and the mapped ones."""
    found = {}
    for folder in [ROOT / "mat_dist", *(ROOT / "mat_dist").rglob("*")]:
        if folder.is_dir() and folder.name != "__pycache__" and any(
                any(folder.glob(pattern)) for pattern in ("*.py", *DATA)):
            found[".".join(folder.relative_to(ROOT).parts)] = folder
    return found | {name: ROOT / path for name, path in MAPPED.items()}


def _source_files() -> set[str]:
    """The paths (as in the wheel) of every module and data file in the packages."""
    files = set()
    for name, folder in _source_packages().items():
        for pattern in ("*.py", *DATA):
            files |= {"/".join([*name.split("."), f.name]) for f in folder.glob(pattern)}
    return files


def test_pyproject_lists_every_package_and_only_mat_dist() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    missing, extra = set(_source_packages()) - listed, listed - set(_source_packages())
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert not extra, f"pyproject.toml lists packages with no folder: {sorted(extra)}"
    assert {name.split(".")[0] for name in listed} == {"mat_dist"}
    assert tool["package-dir"] == MAPPED
    assert _pyproject()["project"]["scripts"] == {"matd": "mat_dist.cli.main:main"}


def test_the_command_line_is_imported_once_and_reads_the_repository_s_folders() -> None:
    import mat_dist.cli.main
    from mat_dist.cluster.files import SHIPPED_CLUSTERS
    from mat_dist.tune.space import SHIPPED_SPACES

    assert Path(mat_dist.cli.main.__file__) == ROOT / "cli" / "main.py"
    assert "cli" not in sys.modules and not any(name.startswith("cli.") for name in sys.modules)
    with pytest.raises(ImportError):
        import cli  # noqa: F401 - from the repository root the folder is importable, and refuses
    # One copy: the files users read and copy are the ones the resolvers find.
    assert SHIPPED_CLUSTERS == ROOT / "clusters" and SHIPPED_SPACES == ROOT / "tune_spaces"


def _copy_sources(to: Path) -> Path:
    """The files the wheel is built from, copied, so that the build writes nothing into the repository."""
    src = to / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ["mat_dist", *MAPPED.values()]:
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    return src


def _run(args: list[str], *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _fresh_venv(where: Path) -> Path:
    """A new virtualenv that sees this environment's dependencies but not its mat_dist.

    Its site-packages lists this environment's as plain path lines: Python imports from there
    without running that folder's .pth files, so the editable install's finder never loads.
    """
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(where)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=where).stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_mat_dist_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return python


# Run by the wheel's Python from an empty folder: resolve every shipped name with mat-dist's own resolvers.
RESOLVE = r"""
import json, sys
from pathlib import Path
import mat_dist
from mat_dist.core.run_config import load_config, resolve_config_path
from mat_dist.cluster.files import load_cluster, resolve_cluster_path
from mat_dist.evaluate.suite import load_suite, resolve_suite_path
from mat_dist.tune.space import load_space, resolve_space_path

names = json.loads(sys.argv[1])
out = {"mat_dist": mat_dist.__file__, "resolved": {}}
for kind, resolve, load in (("clusters", resolve_cluster_path, load_cluster), ("tune_spaces", resolve_space_path, load_space),
                            ("configs", resolve_config_path, load_config), ("suites", resolve_suite_path, load_suite)):
    for name in names[kind]:
        load(name)  # validates, as the commands do
        out["resolved"][f"{kind}/{name}"] = str(resolve(name))
load_cluster(None)
tables = Path(mat_dist.__file__).parent / "reference" / "paper_tables.csv"
out["tables"] = tables.is_file()
print(json.dumps(out))
"""


def test_the_wheel_installs_only_mat_dist_and_resolves_every_shipped_name(tmp_path: Path) -> None:
    src = _copy_sources(tmp_path)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=tmp_path, timeout=240)
    [wheel] = dist.glob("mat_dist-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert {n.split("/")[0] for n in names} - {info} == {"mat_dist"}, "the wheel installs other top-level names"
    packaged = {n for n in names if not n.startswith(info)}
    assert _source_files() <= packaged, f"missing from the wheel: {sorted(_source_files() - packaged)}"
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "matd = mat_dist.cli.main:main" in entry_points

    python = _fresh_venv(tmp_path / "venv")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shipped = {kind: sorted(p.stem for p in folder.glob("*.yaml")) for kind, folder in
               (("clusters", ROOT / "clusters"), ("tune_spaces", ROOT / "tune_spaces"),
                ("configs", ROOT / "mat_dist" / "configs"), ("suites", ROOT / "mat_dist" / "suites"))}
    assert all(shipped.values()) and {"local", "multi-gpu"} <= set(shipped["clusters"])
    out = json.loads(_run([str(python), "-c", RESOLVE, json.dumps(shipped)], cwd=outside).stdout.splitlines()[-1])

    installed = tmp_path / "venv"
    assert Path(out["mat_dist"]).is_relative_to(installed), f"mat_dist came from {out['mat_dist']}, not the wheel"
    expected = {f"{kind}/{name}" for kind, names_ in shipped.items() for name in names_}
    assert set(out["resolved"]) == expected
    for key, path in out["resolved"].items():
        assert Path(path).is_relative_to(installed), f"{key} resolved to {path}, outside the installed wheel"
    assert out["tables"]

    matd = installed / ("Scripts/matd.exe" if os.name == "nt" else "bin/matd")
    assert "train" in _run([str(matd), "--help"], cwd=outside).stdout
    listed = _run([str(matd), "configs"], cwd=outside).stdout
    assert all(name in listed for name in shipped["configs"])
