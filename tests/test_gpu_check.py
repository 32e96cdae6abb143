"""scripts/gpu_check.sh where there is no GPU (as on every CI machine): one line, exit 2, nothing left behind;
and, marked slow, the whole check on the CPU at toy sizes (--cpu-smoke), which tests the check's own plumbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _check(tmp_path: Path, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the check with this interpreter, in an empty folder, with an empty TMPDIR of its own."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path / "tmp")}
    result = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path / "cwd", env=env, capture_output=True,
                            text=True, timeout=timeout)
    return result, tmp_path


def _repo_files() -> set[str]:
    """The repository's top-level entries (a build/ or *.egg-info would show) and everything under scripts/."""
    return {p.name for p in REPO.iterdir()} | {str(p.relative_to(REPO)) for p in (REPO / "scripts").rglob("*")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_a_gpu_the_check_says_so_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    before = _repo_files()
    result, tmp = _check(tmp_path, "result.json", "--wheels", str(tmp_path / "no-such-folder"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device visible to torch"), result.stderr
    assert list((tmp / "cwd").iterdir()) == []  # no result.json
    assert list((tmp / "tmp").iterdir()) == []  # no work folder
    assert _repo_files() == before              # no __pycache__ or build folder in the repository


def test_the_check_without_arguments_prints_its_usage(tmp_path: Path) -> None:
    result, _ = _check(tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("usage: bash scripts/gpu_check.sh RESULT.json")


@pytest.mark.slow
def test_the_whole_check_runs_on_the_cpu_at_toy_sizes(tmp_path: Path) -> None:
    """Every step of the check (install, gpu tests, both benches, the recipe, the field evaluation) with
    --cpu-smoke: what the GPU machine will run, but for the device and the sizes."""
    wheels = REPO / ".gpu-wheels"
    if not any(wheels.glob("*.whl")):
        pytest.skip("no .gpu-wheels: run scripts/gpu_wheels.sh first")
    result, tmp = _check(tmp_path, "result.json", "--cpu-smoke", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp / "cwd" / "result.json").read_text())
    assert report["ok"] and report["mode"] == "cpu-smoke"
    steps = report["steps"]
    assert list(steps) == ["install", "gpu_tests", "bench_cnn", "bench_resnet", "train", "evaluate"]
    assert all(step["ok"] for step in steps.values())
    for bench in ("bench_cnn", "bench_resnet"):
        assert {"mat", "at", "msd"} <= set(steps[bench]["ms_per_batch"])
        assert steps[bench]["passes"]["mat"] == [3, 3]  # K=2: K+1 / K+1, Table 6
    assert "l1_projection_fixed_point_over_sort" in steps["bench_cnn"]["ratios"]
    assert steps["train"]["epochs"][0]["epoch"] == 1 and steps["evaluate"]["examples"] == 10
    assert list((tmp / "tmp").iterdir()) == []  # the work folder and every cache in it are gone
